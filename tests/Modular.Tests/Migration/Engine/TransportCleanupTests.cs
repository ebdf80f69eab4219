using Microsoft.Extensions.Logging;
using Modular.Core.Migration.Engine;

namespace Modular.Tests.Migration.Engine;

/// <summary>A transport plugin that throws while closing does not change a migration's outcome; it is logged.</summary>
[TestClass]
public sealed class TransportCleanupTests
{
    [TestMethod]
    public async Task AThrowingDisposeIsLoggedNamingTheObject_AndDoesNotEscape()
    {
        var logger = new RecordingLogger();
        await TransportCleanup.DisposeAsync(new ThrowingDisposable(), logger, "tcp:127.0.0.1:4444");
        Assert.HasCount(1, logger.Messages);
        StringAssert.Contains(logger.Messages[0], "Closing tcp:127.0.0.1:4444 failed (IOException: reset by peer)");
    }

    [TestMethod]
    public async Task AQuietDisposeLogsNothing()
    {
        var logger = new RecordingLogger();
        var disposable = new CountingDisposable();
        await TransportCleanup.DisposeAsync(disposable, logger, "unix:/tmp/x");
        Assert.AreEqual(1, disposable.Count);
        Assert.IsEmpty(logger.Messages);
    }

    private sealed class ThrowingDisposable : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => throw new IOException("reset by peer");
    }

    private sealed class CountingDisposable : IAsyncDisposable
    {
        public int Count { get; private set; }

        public ValueTask DisposeAsync()
        {
            Count++;
            return ValueTask.CompletedTask;
        }
    }

    private sealed class RecordingLogger : ILogger
    {
        public List<string> Messages { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
    }
}
