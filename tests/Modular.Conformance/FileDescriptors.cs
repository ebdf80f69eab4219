namespace Modular.Conformance;

/// <summary>Counts this process's open file descriptors (/proc/self/fd), for the "dispose releases everything" tests.</summary>
public static class FileDescriptors
{
    /// <summary>The number of open file descriptors now.</summary>
    public static int Count() => Directory.GetFileSystemEntries("/proc/self/fd").Length;

    /// <summary>
    /// The count once it has stopped changing (two counts 100 ms apart agree; 2 s at most): handles
    /// of earlier work (another test's sockets, the runtime's) can still be closing on other threads,
    /// and a baseline taken while they close makes a later count look short or long.
    /// </summary>
    public static int CountStable()
    {
        int count = Count();
        for (int i = 0; i < 20; i++)
        {
            Thread.Sleep(100);
            int again = Count();
            if (again == count)
            {
                return count;
            }

            count = again;
        }

        return count;
    }

    /// <summary>Counts again for up to 2 s until the count drops to <paramref name="expected"/> (closing can finish on another thread).</summary>
    /// <param name="expected">The count before the test.</param>
    public static int CountSettled(int expected)
    {
        int count = Count();
        for (int i = 0; i < 40 && count > expected; i++)
        {
            Thread.Sleep(50);
            count = Count();
        }

        return count;
    }

    /// <summary>What the open descriptors point at (sockets, files, anon inodes), for failure messages.</summary>
    public static string Describe()
    {
        var kinds = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach (string entry in Directory.GetFileSystemEntries("/proc/self/fd"))
        {
            string target;
            try
            {
                target = new FileInfo(entry).LinkTarget ?? "?";
            }
            catch (IOException)
            {
                continue;
            }

            string kind = target.StartsWith('/') ? "file" : target.Split(':')[0];
            kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
        }

        return "open now: " + string.Join(", ", kinds.Select(k => $"{k.Value} {k.Key}"));
    }
}
