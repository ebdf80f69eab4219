using System.Reflection;
using System.Runtime.CompilerServices;
using Modular.Abstractions.Devices;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Compiles, ahead of the switch, the code that runs while the guest is stopped (vCPU state capture,
/// device saves, section and package writers). Without it the JIT compiles those methods on first
/// use, inside the downtime (measured: about 25 ms of a 45 ms postcopy switch under load; the
/// warm-up itself took 375 ms of one core, while the guest ran). Nothing
/// is executed: <see cref="RuntimeHelpers.PrepareMethod(RuntimeMethodHandle)"/> only compiles, so
/// the guest keeps running. Runs once per process on a thread-pool thread: on a source started with
/// QMP right after boot, at nice 19 (<see cref="StartAheadAsync"/>), else when a migration starts
/// (the migration task waits for it, bounded, before it stops the vCPUs); on the
/// destination while it waits for the source (so the incoming path is compiled before the stream
/// arrives: measured about 12% of a postcopy destination's CPU was the JIT).
/// It also compiles the runtime's generic code behind this side's async migration code and the
/// loaded transport plugins' (<see cref="AsyncWarmUp"/>): without that, about 110 methods were
/// compiled inside a postcopy migration's setup (connect, return path, preempt channel), which took
/// 88-134 ms over tcp and 65-100 ms over unix; with it 47-66 and 42-47 ms. The warm-up then costs
/// about 0.6 s of one core instead of 0.26 s, once per process, at nice 19 on a source.
/// </summary>
internal static class SwitchWarmUp
{
    private static readonly string[] CoreNamespaces =
    [
        "Modular.Core.Kvm", "Modular.Core.Vcpus", "Modular.Core.Accel", "Modular.Core.Interop",
        "Modular.Core.Migration.Stream", "Modular.Core.Migration.Engine", "Modular.Core.Migration.Postcopy", "Modular.Core.Migration.Multifd",
        "Modular.Core.Memory",
    ];

    private static readonly Lock Gate = new();
    private static Task<TimeSpan>? _once;
    private static NiceScope _lowered;

    /// <summary>The CPU time the warm-up took (its thread's), once it has finished; zero where the kernel does not say.</summary>
    internal static TimeSpan CpuTime { get; private set; }

    /// <summary>The calling thread's CPU time so far (/proc/thread-self/schedstat), or zero.</summary>
    private static TimeSpan ThreadCpuTime()
    {
        try
        {
            string text = File.ReadAllText("/proc/thread-self/schedstat");
            int space = text.IndexOf(' ', StringComparison.Ordinal);
            return long.TryParse(space > 0 ? text[..space] : text, out long ns) ? TimeSpan.FromTicks(ns / 100) : TimeSpan.Zero;
        }
        catch (IOException)
        {
            return TimeSpan.Zero;
        }
        catch (UnauthorizedAccessException)
        {
            return TimeSpan.Zero;
        }
    }

    /// <summary>Starts compiling (once per process) the switch's code and that of <paramref name="sections"/>' types.</summary>
    /// <returns>How long compiling took (the same task for every caller).</returns>
    /// <remarks>A warm-up started ahead at low priority (<see cref="StartAheadAsync"/>) goes on at the usual priority from here: a migration waits for it.</remarks>
    /// <param name="sections">The machine's device and vCPU sections.</param>
    /// <param name="incoming">True on a destination: the async code of the incoming side is compiled, not that of the outgoing side (and the other way round).</param>
    internal static Task<TimeSpan> StartAsync(IReadOnlyList<ISaveVmSection> sections, bool incoming) => Start(sections, incoming, lowPriority: false);

    /// <summary>
    /// Starts the same warm-up ahead, at nice 19, on a source whose guest runs: once a migration
    /// starts, the compiling no longer competes with its setup for a core (measured on this 2-core
    /// host with a dirtying guest: the warm-up took 115-131 ms of the only free core inside a
    /// postcopy migration's 215-260 ms setup).
    /// </summary>
    internal static Task<TimeSpan> StartAheadAsync(IReadOnlyList<ISaveVmSection> sections) => Start(sections, incoming: false, lowPriority: true);

    private static Task<TimeSpan> Start(IReadOnlyList<ISaveVmSection> sections, bool incoming, bool lowPriority)
    {
        Type[] deviceTypes = sections.Select(s => s.GetType()).Distinct().ToArray();
        lock (Gate)
        {
            if (_once is not null)
            {
                if (!lowPriority)
                {
                    _lowered.Dispose(); // a migration waits for it now: back to the usual priority
                    _lowered = default;
                }

                return _once;
            }

            Func<TimeSpan> compile = () =>
            {
                long started = System.Diagnostics.Stopwatch.GetTimestamp();
                TimeSpan cpuBefore = ThreadCpuTime();
                IEnumerable<Type> core = typeof(SwitchWarmUp).Assembly.GetTypes()
                    .Where(t => t.Namespace is { } ns && CoreNamespaces.Contains(ns));
                foreach (Type type in core.Concat(deviceTypes).Append(typeof(SaveVmWriter)))
                {
                    Prepare(type, incoming);
                }

                foreach (Type type in PluginStateMachines())
                {
                    AsyncWarmUp.Prepare(type);
                }

                Exercise();
                CpuTime = ThreadCpuTime() - cpuBefore;
                // Then, on its own and waited for by nobody, the first TLS handshake's cost (OpenSSL,
                // SslStream, X509Chain): a source is usually given its credentials by object-add just
                // before migrate, too late to warm up then (measured: 200-240 ms of the setup).
                Tls.TlsWarmUp.Start();
                return System.Diagnostics.Stopwatch.GetElapsedTime(started);
            };
            if (!lowPriority)
            {
                _once = Task.Run(compile);
                return _once;
            }

            // A thread of its own, lowered for its whole life: nothing to restore afterwards (a
            // process without CAP_SYS_NICE could not raise a pool thread back from nice 19).
            var done = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
            var thread = new Thread(() =>
            {
                lock (Gate)
                {
                    _lowered = NiceScope.LowerCurrentThread();
                }

                try
                {
                    done.SetResult(compile());
                }
                catch (Exception ex)
                {
                    done.SetException(ex);
                }
                finally
                {
                    lock (Gate)
                    {
                        _lowered = default; // the thread ends: its id must not be touched again
                    }
                }
            })
            { IsBackground = true, Name = "migration warm-up" };
            thread.Start();
            _once = done.Task;
            return _once;
        }
    }

    /// <summary>
    /// Runs, once, switch code that <see cref="RuntimeHelpers.PrepareMethod(RuntimeMethodHandle)"/>
    /// cannot reach: generic instantiations (the vCPU state's serializer is built from generic
    /// helpers; measured 3.7 ms on its first run, inside the downtime). On a state made up here, so
    /// nothing touches the guest.
    /// </summary>
    private static void Exercise()
    {
        try
        {
            // A whole XSAVE area (4096 bytes): with less, ReadFrom stopped there and the parts after it
            // were first read inside a postcopy destination's package load (its real downtime).
            var state = new Vcpus.VcpuState { Msrs = [new Interop.KvmMsrEntry()], Cpuid = [new Interop.KvmCpuidEntry2()], Xsave = new byte[4096] };
            byte[] bytes = new byte[state.SerializedSize];
            state.WriteTo(bytes);
            _ = Vcpus.VcpuState.ReadFrom(bytes);
            _ = ((IReadOnlyList<uint>)[1u]).ToArray();
            ReadOnlySpan<Interop.KvmMsrEntry> msrs = state.Msrs;
            _ = msrs.Length;
        }
        catch (Exception ex) when (ex is Vcpus.VcpuStateFormatException or ArgumentException)
        {
            // Compiled all the same; a made-up state need not be a loadable one.
        }

        // Both sides parse and print addresses when connecting (generic code over char).
        _ = System.Net.IPAddress.Parse("127.0.0.1").ToString();
        ExerciseSwitchWriters();
        ExerciseIncomingLookups();
        OutgoingMigration.WarmUpRequestQueue();
        // The postcopy listen thread's priority change, made on it right after RUN.
        _ = new List<NiceScope> { default }.Count;
        // The fault thread reads faults into an array given as a span: generic code over a type of
        // Modular.Abstractions, compiled at the first guest fault without this (measured, inside the
        // first page request).
        Span<Abstractions.Faults.PageFault> faults = new Abstractions.Faults.PageFault[1];
        _ = faults.Length;
        StreamWarmUp.Exercise();
    }

    /// <summary>
    /// The lookups an incoming migration first makes inside a postcopy package, where the guest runs
    /// nowhere until RUN: sections by id (uint keys) and devices by (name, instance). Generic code
    /// over value-type keys has no precompiled form; with reference-type values it is shared, so
    /// made-up values compile what the real ones use (measured: the package load took 40-57 ms,
    /// about 80 methods compiled in it).
    /// </summary>
    private static void ExerciseIncomingLookups()
    {
        object value = new();
        var byId = new Dictionary<uint, object> { [1] = value };
        _ = byId.TryGetValue(1, out _);
        foreach (KeyValuePair<uint, object> pair in byId)
        {
            _ = pair.Key;
            _ = pair.Value;
        }

        var byName = new Dictionary<(string, uint), object> { [("ram", 0)] = value };
        _ = byName.TryGetValue(("ram", 0), out _);
        var ids = new List<uint> { 1, 2, 3, 4, 5 };
        _ = ids.Count;

        // Where the incoming side builds the device table and sizes postcopy's host pages, and
        // where the dirty log is first read: LINQ and Array over value types (JIT log of a
        // postcopy migration's setup).
        string[] names = ["ram"];
        _ = names.ToDictionary(n => (n, 0u));
        _ = names.Max(n => (ulong)n.Length);
        _ = Array.TrueForAll(new ulong[1], w => w == 0);
    }

    /// <summary>
    /// The switch's writers on made-up data into a scratch buffer: discard ranges, the package
    /// (LISTEN, a device section, RUN), the VM description's device list and its JSON. Each uses generic
    /// collections over Modular's own types, which the ReadyToRun image cannot hold (measured:
    /// about 60 such methods compiled inside the downtime without this).
    /// </summary>
    private static void ExerciseSwitchWriters()
    {
        var sent = new Memory.DirtyBitmap(128);
        sent.SetRange(0, 8);
        var dirty = new Memory.DirtyBitmap(128);
        dirty.SetRange(4, 8);
        List<(ulong Start, ulong Length)> ranges = OutgoingMigration.DiscardRanges(sent, dirty, 4096);

        var scratch = new System.Buffers.ArrayBufferWriter<byte>(64 * 1024);
        var writer = new MigrationStreamWriter(scratch);
        new PostcopyRamDiscardCommand("warm-up", ranges.GetRange(0, ranges.Count)).WriteTo(writer);

        var package = new System.Buffers.ArrayBufferWriter<byte>(64 * 1024);
        var inner = new MigrationStreamWriter(package);
        new PostcopyListenCommand().WriteTo(inner);
        var description = new VmDescriptionBuilder();
        description.AddRam(0);
        OutgoingMigration.WriteDeviceSections(inner, [new MadeUpSection()], firstSectionId: 1, description);
        new PostcopyRunCommand().WriteTo(inner);
        PackagedCommand.WriteWithPackage(writer, package.WrittenSpan);
        writer.WriteEof();
        new VmDescription(description.ToJson()).WriteTo(writer);
    }

    /// <summary>A device section that saves four made-up bytes.</summary>
    private sealed class MadeUpSection : ISaveVmSection
    {
        public string IdString => "x-modular-warm-up";

        public uint InstanceId => 0;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        public void Save(SaveVmWriter writer) => writer.WriteBe32(0);

        public void Load(SaveVmReader reader, uint version) => _ = reader.ReadBe32();
    }

    private static void Prepare(Type type, bool incoming)
    {
        if (type.ContainsGenericParameters)
        {
            return;
        }

        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (MethodBase method in type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all)))
        {
            // P/Invoke methods have no body but do have a marshalling stub worth preparing.
            bool native = (method.Attributes & MethodAttributes.PinvokeImpl) != 0;
            if (method.IsAbstract || method.ContainsGenericParameters || (!native && method.GetMethodBody() is null))
            {
                continue;
            }

            // Not compilable on its own (e.g. a method of a type that needs an instantiation): it is
            // compiled on first use, as without the warm-up.
            AsyncWarmUp.TryPrepare(method);
        }

        if (IsMigrationCodeFor(type, incoming))
        {
            AsyncWarmUp.Prepare(type);
        }

        foreach (Type nested in type.GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic))
        {
            Prepare(nested, incoming);
        }
    }

    /// <summary>
    /// Whether the async machinery of <paramref name="type"/> is worth compiling ahead on this side:
    /// migration code, but not the other side's engine (each state machine costs 5-10 methods; all
    /// of them took about 1 s of one core here).
    /// </summary>
    private static bool IsMigrationCodeFor(Type type, bool incoming)
    {
        if (type.Namespace is not { } ns || !ns.StartsWith("Modular.Core.Migration", StringComparison.Ordinal))
        {
            return false;
        }

        Type outermost = type;
        while (outermost.DeclaringType is { } declaring)
        {
            outermost = declaring;
        }

        return incoming
            ? outermost != typeof(OutgoingMigration) && outermost != typeof(RamSaver) && outermost != typeof(Multifd.MultifdSender)
            : outermost != typeof(IncomingMigration) && outermost != typeof(RamLoader) && outermost != typeof(Multifd.MultifdReceiver);
    }

    /// <summary>
    /// The async methods' state machines of the loaded plugins (Modular's and anyone's: every
    /// assembly in a plugin's load context that is built against Modular.Abstractions). Their own
    /// code may be precompiled (ReadyToRun); the runtime's generic code instantiated over them is not
    /// (see <see cref="AsyncWarmUp"/>).
    /// </summary>
    private static IEnumerable<Type> PluginStateMachines()
    {
        string abstractions = typeof(Modular.Abstractions.Transports.IMigrationTransport).Assembly.GetName().Name!;
        foreach (Assembly assembly in AppDomain.CurrentDomain.GetAssemblies())
        {
            if (assembly.IsDynamic ||
                System.Runtime.Loader.AssemblyLoadContext.GetLoadContext(assembly) == System.Runtime.Loader.AssemblyLoadContext.Default ||
                !assembly.GetReferencedAssemblies().Any(r => r.Name == abstractions))
            {
                continue;
            }

            Type[] types;
            try
            {
                types = assembly.GetTypes();
            }
            catch (ReflectionTypeLoadException ex)
            {
                // A plugin type whose dependency is missing here (the RDMA plugin's, say): the rest still warms up.
                types = ex.Types.Where(t => t is not null).ToArray()!;
            }

            foreach (Type type in types)
            {
                if (typeof(IAsyncStateMachine).IsAssignableFrom(type))
                {
                    yield return type;
                }
            }
        }
    }
}
