// The machine has two shared cores; keep tests sequential within the assembly.
[assembly: DoNotParallelize]
