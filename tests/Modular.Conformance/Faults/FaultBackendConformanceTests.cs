using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;

namespace Modular.Conformance.Faults;

/// <summary>
/// The conformance suite for a fault backend plugin. Subclass it in your test project, mark the
/// subclass <c>[TestClass]</c>, and supply <see cref="Factory"/>. Every touch of armed memory is
/// made by a native memcpy on another thread (<see cref="NativeToucher"/>), because managed code that
/// faults on armed memory deadlocks the garbage collector (DESIGN.md §5). On a host where the probe
/// says the backend is not usable, every test is inconclusive with the probe's reason.
/// </summary>
public abstract class FaultBackendConformanceTests
{
    /// <summary>How long a touch that must stay blocked is watched.</summary>
    protected static readonly TimeSpan Blocked = TimeSpan.FromMilliseconds(300);

    /// <summary>How long a touch that must be released may take.</summary>
    protected static readonly TimeSpan Released = TimeSpan.FromSeconds(10);

    /// <summary>The fault backend factory under test.</summary>
    protected abstract IFaultBackendFactory Factory { get; }

    /// <summary>The backend's name in messages: its metadata name, else its type name.</summary>
    protected virtual string Name =>
        Factory.GetType().GetCustomAttributes(typeof(FaultBackendMetadataAttribute), false).OfType<FaultBackendMetadataAttribute>().FirstOrDefault()?.Name
        ?? Factory.GetType().Name;

    /// <summary>Probe() says whether the backend is usable here and, when it is not, why.</summary>
    [TestMethod]
    public void ProbeSaysWhetherItIsUsableAndWhyNot()
    {
        PluginAvailability availability = Factory.Probe();
        Expect.That(availability is not null, $"{Name}: Probe() returned null; return PluginAvailability.Usable or PluginAvailability.NotUsable(reason).");
        if (!availability.IsUsable)
        {
            Expect.That(!(string.IsNullOrWhiteSpace(availability.Reason)),
                $"{Name}: Probe() says the backend is not usable but gives no reason; the operator needs to know what is missing and what to do.");
            Assert.Inconclusive($"{Name} is not usable on this host: {availability.Reason}");
        }

        using IFaultBackend backend = OpenOrFail();
        _ = backend;
    }

    /// <summary>A range can be armed, disarmed, and armed again; after disarm the memory is ordinary memory.</summary>
    [TestMethod]
    public void ArmAndDisarm()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.Map(4);
        backend.Arm(mapping.Range);
        backend.Disarm(mapping.Range);

        NativeToucher toucher = scope.Track(NativeToucher.Read(mapping.Page(1), 16));
        Expect.That(toucher.Finished(Released),
            $"{Name}: a touch of a disarmed range did not complete within {Released.TotalSeconds} s: Disarm must unregister the range, after which missing pages are ordinary zero-filled memory.");
        Expect.Bytes(new byte[16], toucher.Bytes(), $"{Name}: a page of a disarmed anonymous range should read as zeros.");

        TestRamMapping second = scope.Map(2);
        backend.Arm(second.Range);
        NativeToucher again = scope.Track(NativeToucher.Read(second.Page(0), 8));
        PageFault fault = ReadOneFault(backend, "after arming a second range");
        Expect.Equal(second.Page(0), PageOf(fault.HostAddress, second.PageSize), $"{Name}: the fault after re-arming names the wrong page.");
        ExpectPlaced(backend.PlacePage(second.Page(0), Pattern(second.PageSize, 1)), "PlacePage of a missing page");
        Expect.That(again.Finished(Released), $"{Name}: placing the page did not wake the toucher.");
    }

    /// <summary>A native touch of an armed missing page arrives as a fault with its address (and thread id, when known); the toucher waits.</summary>
    [TestMethod]
    public void TouchOfAnArmedMissingPageIsDeliveredWithItsAddress()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.MapArmed(16);

        NativeToucher reader = scope.Track(NativeToucher.Read(mapping.Page(5) + 100, 8));
        PageFault fault = ReadOneFault(backend, "for a read of page 5");
        Expect.Equal(mapping.Page(5), PageOf(fault.HostAddress, mapping.PageSize),
            $"{Name}: a read at 0x{mapping.Page(5) + 100:x} was reported at 0x{fault.HostAddress:x}; the fault must carry the touched address (its page at least).");
        if (fault.ThreadId != 0)
        {
            Expect.Equal(reader.ThreadId, fault.ThreadId, $"{Name}: the fault names thread {fault.ThreadId}, but thread {reader.ThreadId} touched the page (report 0 when unknown).");
        }

        Expect.That(!(fault.IsWrite), $"{Name}: a read was reported as a write.");
        Expect.That(!(reader.Finished(Blocked)), $"{Name}: the touch of a missing armed page completed before the page was placed: it must wait for PlacePage.");

        NativeToucher writer = scope.Track(NativeToucher.Write(mapping.Page(9) + 8, 4, 0x5A));
        PageFault writeFault = ReadOneFault(backend, "for a write of page 9");
        Expect.Equal(mapping.Page(9), PageOf(writeFault.HostAddress, mapping.PageSize), $"{Name}: a write of page 9 was reported at 0x{writeFault.HostAddress:x}.");
        Expect.That(writeFault.IsWrite, $"{Name}: a write was reported as a read.");

        ExpectPlaced(backend.PlacePage(mapping.Page(5), Pattern(mapping.PageSize, 5)), "PlacePage of a missing page");
        ExpectPlaced(backend.PlaceZeroPage(mapping.Page(9), mapping.PageSize), "PlaceZeroPage of a missing page");
        Expect.That(reader.Finished(Released) && writer.Finished(Released), $"{Name}: placing the pages did not wake the touchers.");
        byte[] written = NativeToucher.ReadNow(mapping.Page(9), 16);
        Expect.Bytes(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 0x5A, 0x5A, 0x5A, 0x5A, 0, 0, 0, 0 }, written,
            $"{Name}: the write that faulted must land on the placed zero page once woken.");
    }

    /// <summary>Placing one page wakes exactly its waiter, which sees the placed contents; others keep waiting.</summary>
    [TestMethod]
    public void PlacingAPageWakesExactlyItsWaiterWithItsContents()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.MapArmed(8);

        NativeToucher first = scope.Track(NativeToucher.Read(mapping.Page(1), 64));
        NativeToucher second = scope.Track(NativeToucher.Read(mapping.Page(6) + 64, 64));
        var faulted = new HashSet<nint>
        {
            PageOf(ReadOneFault(backend, "for page 1 or 6").HostAddress, mapping.PageSize),
            PageOf(ReadOneFault(backend, "for page 1 or 6").HostAddress, mapping.PageSize),
        };
        Expect.That(faulted.SetEquals([mapping.Page(1), mapping.Page(6)]),
            $"{Name}: two threads touched pages 1 and 6, but the faults named {string.Join(", ", faulted.Select(a => $"0x{a:x}"))}.");

        byte[] six = Pattern(mapping.PageSize, 6);
        Expect.Equal(PlaceResult.Placed, backend.PlacePage(mapping.Page(6), six), $"{Name}: PlacePage of a missing page must return Placed.");
        Expect.That(second.Finished(Released), $"{Name}: placing page 6 did not wake the thread waiting on it.");
        Expect.That(!(first.Finished(Blocked)), $"{Name}: placing page 6 released the thread waiting on page 1, whose page is still missing (it would read garbage).");
        Expect.Bytes(six[64..128], second.Bytes(), $"{Name}: the woken thread read something other than the placed contents.");

        byte[] one = Pattern(mapping.PageSize, 1);
        ExpectPlaced(backend.PlacePage(mapping.Page(1), one), "PlacePage of a missing page");
        Expect.That(first.Finished(Released), $"{Name}: placing page 1 did not wake its waiter.");
        Expect.Bytes(one[..64], first.Bytes(), $"{Name}: page 1's waiter read something other than the placed contents.");
    }

    /// <summary>A page that arrives twice is reported AlreadyPresent and keeps its first contents; a zero page does not overwrite it either.</summary>
    [TestMethod]
    public void PlacingAnAlreadyPlacedPageIsHandled()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.MapArmed(2);

        byte[] first = Pattern(mapping.PageSize, 1);
        ExpectPlaced(backend.PlacePage(mapping.Page(0), first), "PlacePage of a missing page");
        PlaceResult again = backend.PlacePage(mapping.Page(0), Pattern(mapping.PageSize, 2));
        Expect.Equal(PlaceResult.AlreadyPresent, again,
            $"{Name}: placing a page that is already there returned {again}; it must return AlreadyPresent (and wake waiters) rather than fail or overwrite.");
        Expect.Equal(PlaceResult.AlreadyPresent, backend.PlaceZeroPage(mapping.Page(0), mapping.PageSize),
            $"{Name}: a zero page over a present page must return AlreadyPresent.");
        Expect.Bytes(first, NativeToucher.ReadNow(mapping.Page(0), (int)mapping.PageSize),
            $"{Name}: a second placement changed the page; the first contents must stay (the guest may already have written to it).");
    }

    /// <summary>
    /// A run of pages is placed in one call: the waiter inside it wakes with its contents, a page
    /// already present in the middle keeps its contents and does not stop the pages after it, and
    /// the count says how many the call placed.
    /// </summary>
    [TestMethod]
    public void PlacingARunSkipsPresentPagesAndWakesItsWaiters()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.MapArmed(8);

        byte[] present = Pattern(mapping.PageSize, 9);
        ExpectPlaced(backend.PlacePage(mapping.Page(3), present), "PlacePage of a missing page");
        NativeToucher waiter = scope.Track(NativeToucher.Read(mapping.Page(5) + 128, 64));
        nint faulted = PageOf(ReadOneFault(backend, "for page 5").HostAddress, mapping.PageSize);
        Expect.That(faulted == mapping.Page(5), $"{Name}: a read of page 5 at 0x{mapping.Page(5):x} was reported at page 0x{faulted:x}.");

        int pages = 6; // pages 1-6: page 3 is already there
        byte[] run = new byte[pages * (int)mapping.PageSize];
        for (int i = 0; i < pages; i++)
        {
            Pattern(mapping.PageSize, i + 1).CopyTo(run, i * (int)mapping.PageSize);
        }

        int placed = backend.PlacePages(mapping.Page(1), run, mapping.PageSize);
        Expect.Equal(pages - 1, placed, $"{Name}: PlacePages over six pages of which one was present must report 5 placed.");
        Expect.That(waiter.Finished(Released), $"{Name}: PlacePages did not wake the thread waiting on page 5, inside the run.");
        Expect.Bytes(Pattern(mapping.PageSize, 5)[128..192], waiter.Bytes(), $"{Name}: page 5's waiter read something other than the run's contents for it.");
        Expect.Bytes(present, NativeToucher.ReadNow(mapping.Page(3), (int)mapping.PageSize),
            $"{Name}: PlacePages overwrote page 3, which was already present; it must be left as it was.");
        for (int page = 1; page <= pages; page++)
        {
            if (page == 3)
            {
                continue;
            }

            Expect.Bytes(Pattern(mapping.PageSize, page), NativeToucher.ReadNow(mapping.Page(page), (int)mapping.PageSize),
                $"{Name}: page {page} does not hold the run's contents after PlacePages (a present page must not stop the pages after it).");
        }
    }

    /// <summary>A zero page is placed atomically and wakes its waiter, who reads zeros.</summary>
    [TestMethod]
    public void ZeroPageIsPlacedAndWakesItsWaiter()
    {
        using var scope = new FaultTestScope(OpenUsable());
        IFaultBackend backend = scope.Backend;
        TestRamMapping mapping = scope.MapArmed(2);

        NativeToucher toucher = scope.Track(NativeToucher.Read(mapping.Page(1), (int)mapping.PageSize));
        nint faultedPage = PageOf(ReadOneFault(backend, "for page 1").HostAddress, mapping.PageSize);
        Expect.That(faultedPage == mapping.Page(1), $"{Name}: a read of page 1 at 0x{mapping.Page(1):x} was reported at page 0x{faultedPage:x}.");
        Expect.Equal(PlaceResult.Placed, backend.PlaceZeroPage(mapping.Page(1), mapping.PageSize), $"{Name}: PlaceZeroPage of a missing page must return Placed.");
        Expect.That(toucher.Finished(Released), $"{Name}: PlaceZeroPage did not wake the waiter.");
        Expect.Bytes(new byte[mapping.PageSize], toucher.Bytes(), $"{Name}: the zero page does not read as zeros.");
    }

    /// <summary>Disarm wakes a waiter; Shutdown ends ReadFaults; Dispose closes every file descriptor the backend opened.</summary>
    [TestMethod]
    public void DisarmAndDisposeReleaseEverything()
    {
        OpenUsable().Dispose(); // warm up lazily opened runtime handles
        int before = FileDescriptors.CountStable();
        using (var scope = new FaultTestScope(OpenUsable()))
        {
            IFaultBackend backend = scope.Backend;
            TestRamMapping mapping = scope.MapArmed(4);
            NativeToucher toucher = scope.Track(NativeToucher.Read(mapping.Page(3), 8));
            ReadOneFault(backend, "for page 3");
            Expect.That(!toucher.Finished(Blocked), $"{Name}: the touch of a missing armed page completed before the page was placed: it must wait for PlacePage.");
            backend.Disarm(mapping.Range);
            Expect.That(toucher.Finished(Released), $"{Name}: Disarm left a thread waiting on a missing page; disarming must wake every waiter in the range.");

            int result = -1;
            var reader = new Thread(() => result = backend.ReadFaults(new PageFault[4])) { IsBackground = true };
            reader.Start();
            Expect.That(!(reader.Join(Blocked)), $"{Name}: ReadFaults returned ({result}) although nothing faulted; it must block until a fault or Shutdown.");
            backend.Shutdown();
            Expect.That(reader.Join(Released), $"{Name}: Shutdown did not unblock ReadFaults.");
            Expect.Equal(0, result, $"{Name}: ReadFaults must return 0 after Shutdown.");
            backend.Shutdown();
        } // the scope disposes the backend

        int after = FileDescriptors.CountSettled(before);
        Expect.That(after <= before, $"{Name}: {after - before} file descriptor(s) are still open after Dispose; {FileDescriptors.Describe()}. Dispose must close everything Open() created.");
    }

    /// <summary>Opens the backend, or fails the test when the probe said it was usable but Open threw.</summary>
    protected IFaultBackend OpenOrFail()
    {
        try
        {
            return Factory.Open();
        }
        catch (Exception ex)
        {
            throw new AssertFailedException($"{Name}: Probe() says the backend is usable, but Open() threw {ex.GetType().Name}: {ex.Message}");
        }
    }

    /// <summary>Opens the backend when the probe says it is usable here; otherwise the test is inconclusive with the probe's reason.</summary>
    protected IFaultBackend OpenUsable()
    {
        PluginAvailability availability = Factory.Probe();
        if (!availability.IsUsable)
        {
            Assert.Inconclusive($"{Name} is not usable on this host: {availability.Reason ?? "(no reason given)"}");
        }

        return OpenOrFail();
    }

    /// <summary>Reads one fault, with a watchdog that calls Shutdown after 10 s so a lost fault fails instead of hanging.</summary>
    /// <param name="backend">The armed backend.</param>
    /// <param name="what">What was touched, for the message.</param>
    protected PageFault ReadOneFault(IFaultBackend backend, string what)
    {
        using var watchdog = new Timer(_ => backend.Shutdown(), null, Released, Timeout.InfiniteTimeSpan);
        var faults = new PageFault[1];
        int count = backend.ReadFaults(faults);
        Expect.Equal(1, count, $"{Name}: no fault was delivered {what} within {Released.TotalSeconds} s of the touch; ReadFaults must return each fault on an armed missing page.");
        return faults[0];
    }

    private void ExpectPlaced(PlaceResult result, string what) =>
        Expect.That(result == PlaceResult.Placed, $"{Name}: {what} returned {result}; it must place the page and return Placed.");

    /// <summary>The page containing <paramref name="address"/>.</summary>
    protected static nint PageOf(nint address, ulong pageSize) => address & ~(nint)(pageSize - 1);

    /// <summary>A page of bytes that differs for every seed and offset.</summary>
    protected static byte[] Pattern(ulong pageSize, int seed)
    {
        byte[] page = new byte[pageSize];
        for (int i = 0; i < page.Length; i++)
        {
            page[i] = (byte)((i * 7) + (seed * 31) + (i >> 8) + 1);
        }

        return page;
    }
}
