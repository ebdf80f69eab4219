using Modular.Core.Migration.State;

namespace Modular.Tests.Migration;

[TestClass]
public sealed class StateMachineTests
{
    [TestMethod]
    public void PostcopyMovesOnlyAdviseListenRunningEnd()
    {
        var machine = new PostcopyStateMachine();
        machine.MoveTo(PostcopyState.Advise);
        machine.MoveTo(PostcopyState.Listening);
        machine.MoveTo(PostcopyState.Running);
        machine.MoveTo(PostcopyState.End);
        Assert.AreEqual(PostcopyState.End, machine.Current);
    }

    [TestMethod]
    [DataRow(PostcopyState.None, PostcopyState.Listening, "Postcopy state cannot move from NONE to LISTEN")]
    [DataRow(PostcopyState.Advise, PostcopyState.Running, "Postcopy state cannot move from ADVISE to RUNNING")]
    [DataRow(PostcopyState.Running, PostcopyState.Listening, "Postcopy state cannot move from RUNNING to LISTEN")]
    [DataRow(PostcopyState.End, PostcopyState.Advise, "Postcopy state cannot move from END to ADVISE")]
    public void PostcopyRefusesIllegalMovesNamingBothStates(PostcopyState from, PostcopyState to, string expected)
    {
        var machine = new PostcopyStateMachine();
        for (var s = PostcopyState.Advise; s <= from; s++)
        {
            machine.MoveTo(s);
        }

        var ex = Assert.ThrowsExactly<IllegalTransitionException>(() => machine.MoveTo(to));
        StringAssert.StartsWith(ex.Message, expected);
        Assert.AreEqual(from, machine.Current);
    }

    [TestMethod]
    public void MigrationStatusFollowsQemuAndRaisesEvents()
    {
        var machine = new MigrationStatusMachine();
        var seen = new List<string>();
        machine.Changed += s => seen.Add(s.ToQmp());

        machine.MoveTo(MigrationStatus.Setup);
        machine.MoveTo(MigrationStatus.Active);
        machine.MoveTo(MigrationStatus.PostcopyActive);
        machine.MoveTo(MigrationStatus.Completed);

        CollectionAssert.AreEqual(new[] { "setup", "active", "postcopy-active", "completed" }, seen);
        Assert.IsTrue(machine.IsFinished);
    }

    [TestMethod]
    public void CancelIsRefusedDuringPostcopyAndCompletedCannotGoActive()
    {
        var machine = new MigrationStatusMachine();
        machine.MoveTo(MigrationStatus.Setup);
        machine.MoveTo(MigrationStatus.Active);
        machine.MoveTo(MigrationStatus.PostcopyActive);

        var ex = Assert.ThrowsExactly<IllegalTransitionException>(() => machine.MoveTo(MigrationStatus.Cancelling));
        Assert.AreEqual("Migration status cannot move from 'postcopy-active' to 'cancelling'.", ex.Message);
        machine.MoveTo(MigrationStatus.Completed);
        Assert.IsFalse(machine.TryMoveTo(MigrationStatus.Active, out MigrationStatus from));
        Assert.AreEqual(MigrationStatus.Completed, from);
    }

    [TestMethod]
    public void TryMoveFromFailsWhenSomeoneElseMovedFirst()
    {
        var machine = new MigrationStatusMachine();
        machine.MoveTo(MigrationStatus.Setup);
        machine.MoveTo(MigrationStatus.Active);
        machine.MoveTo(MigrationStatus.Cancelling);

        Assert.IsFalse(machine.TryMoveFrom(MigrationStatus.Active, MigrationStatus.Completed));
        Assert.IsTrue(machine.TryMoveFrom(MigrationStatus.Cancelling, MigrationStatus.Cancelled));
    }

    [TestMethod]
    public void ConvergenceFollowsBandwidthTimesDowntime()
    {
        // 1 GB/s and 300 ms: 300 MB may remain.
        Assert.AreEqual(300_000_000UL, ConvergenceRule.ThresholdBytes(1e9, 300));
        Assert.IsTrue(ConvergenceRule.HasConverged(300_000_000, 1e9, 300));
        Assert.IsFalse(ConvergenceRule.HasConverged(300_000_001, 1e9, 300));
        Assert.IsFalse(ConvergenceRule.HasConverged(1, 0, 300));
        Assert.AreEqual(150, ConvergenceRule.ExpectedDowntimeMs(150_000_000, 1e9));
    }

    [TestMethod]
    public void BandwidthIsMeasuredPerWindow()
    {
        var clock = new ManualClock();
        var estimator = new BandwidthEstimator(clock);
        estimator.Add(50_000_000);
        clock.Advance(TimeSpan.FromMilliseconds(50));
        Assert.IsFalse(estimator.TryCloseWindow(TimeSpan.FromMilliseconds(100)));
        estimator.Add(50_000_000);
        clock.Advance(TimeSpan.FromMilliseconds(50));
        Assert.IsTrue(estimator.TryCloseWindow(TimeSpan.FromMilliseconds(100)));
        Assert.AreEqual(1e9, estimator.BytesPerSecond, 1e6);
    }

    private sealed class ManualClock : TimeProvider
    {
        private long _ticks;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => _ticks;

        public void Advance(TimeSpan by) => _ticks += by.Ticks;
    }
}
