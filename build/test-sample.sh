#!/usr/bin/env bash
# Packs the plugin contract and the conformance kit into a local feed, then builds and tests the
# out-of-tree sample plugin (samples/CompressedTcpTransport) against those packages, as a plugin
# author would. Not part of `dotnet test Modular.sln`.
#
#   build/test-sample.sh              conformance + compression tests (the migration test is left out)
#   build/test-sample.sh --migration  also the end-to-end migration through the dropped-in plugin; needs
#                                     the migration engine in this build and the CLI and guest built
#                                     (`dotnet build Modular.sln` first)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
feed="$root/artifacts/feed"
sample="$root/samples/CompressedTcpTransport"

mkdir -p "$feed"
dotnet pack "$root/core/Modular.Abstractions" -c Release -o "$feed" --nologo
dotnet pack "$root/tests/Modular.Conformance" -c Release -o "$feed" --nologo

# The sample restores into its own packages folder (samples/nuget.config); forget earlier copies of
# our 1.0.0 packages so a re-pack is picked up.
rm -rf "$root/artifacts/sample-packages/modular.abstractions" "$root/artifacts/sample-packages/modular.conformance"

dotnet build "$sample/CompressedTcpTransport.slnx" --nologo
filter="TestCategory!=migration"
if [[ "${1:-}" == "--migration" ]]; then
  filter=""
fi
dotnet test "$sample/CompressedTcpTransport.slnx" --no-build --nologo ${filter:+--filter "$filter"}
