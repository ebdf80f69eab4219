using System.Globalization;
using Modular.Abstractions.Devices;

namespace Modular.Devices.Config;

/// <summary>Reads the config keys the built-in devices share; every error names the JSON path of the key.</summary>
internal static class DeviceConfigReading
{
    /// <summary>Keys every device section carries besides its own (the config loader may pass them through).</summary>
    private static readonly string[] CommonKeys = ["id", "type"];

    /// <summary>Refuses keys the device does not know, so a typo is an error rather than a silent default.</summary>
    public static void RequireKnownKeys(this DeviceConfig config, params string[] known)
    {
        foreach (string key in config.Properties.Keys)
        {
            if (!known.Contains(key, StringComparer.Ordinal) && !CommonKeys.Contains(key, StringComparer.Ordinal))
            {
                throw new DeviceConfigException(
                    $"{config.Path}.{key}: unknown key for a '{config.Type}' device. Known keys: {string.Join(", ", known)}.");
            }
        }
    }

    /// <summary>
    /// Reads the first port of a range of <paramref name="count"/> ports and checks that the whole range
    /// fits below 0x10000.
    /// </summary>
    public static ushort GetPortBase(this DeviceConfig config, string key, ushort defaultValue, int count)
    {
        ulong value = config.GetUInt64(key, defaultValue);
        if (value + (ulong)count > 0x10000)
        {
            throw new DeviceConfigException(
                $"{config.Path}.{key}: port 0x{value:x} with {count} ports does not fit in the I/O space (ports end at 0xffff).");
        }

        return (ushort)value;
    }

    /// <summary>Reads a number in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static uint GetUInt32InRange(this DeviceConfig config, string key, uint defaultValue, uint min, uint max)
    {
        ulong value = config.GetUInt64(key, defaultValue);
        if (value < min || value > max)
        {
            throw new DeviceConfigException(
                $"{config.Path}.{key}: {value.ToString(CultureInfo.InvariantCulture)} is out of range; expected {min}..{max}.");
        }

        return (uint)value;
    }
}
