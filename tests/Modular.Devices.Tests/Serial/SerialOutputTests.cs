using System.Net.Sockets;
using System.Text;
using Modular.Abstractions.Devices;
using Modular.Devices.Serial;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.Serial;

[TestClass]
public sealed class SerialOutputTests
{
    private string _dir = "";

    [TestInitialize]
    public void CreateDirectory() => _dir = Directory.CreateTempSubdirectory("modular-serial-").FullName;

    [TestCleanup]
    public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

    private static SerialDevice Create(params (string, string)[] properties) =>
        (SerialDevice)new SerialFactory().Create(ConfigOf("serial", properties), new TestDeviceContext());

    private static void Print(SerialDevice serial, string text)
    {
        foreach (char c in text) { Out8(serial, 0x3f8, (byte)c); }
    }

    [TestMethod]
    public void FileOutputAppearsPromptlyAfterANewlineAndFullyOnDispose()
    {
        string path = Path.Combine(_dir, "console.log");
        SerialDevice serial = Create(("output", "file:" + path));
        Print(serial, "A\n");

        // Line-buffered: the complete line reaches the file while the device is still open.
        string seen = "";
        for (var deadline = DateTime.UtcNow.AddSeconds(5); DateTime.UtcNow < deadline && seen != "A\n"; Thread.Sleep(5))
        {
            using var reader = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            seen = new StreamReader(reader).ReadToEnd();
        }

        Assert.AreEqual("A\n", seen);
        Print(serial, "B");
        serial.Dispose();
        Assert.AreEqual("A\nB", File.ReadAllText(path));
    }

    [TestMethod]
    public void UnixOutputConnectsToAListeningSocket()
    {
        string path = Path.Combine(_dir, "console.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);

        using SerialDevice serial = Create(("output", "unix:" + path));
        using Socket peer = listener.Accept();
        peer.ReceiveTimeout = 5000;
        Print(serial, "A\nB\n");

        var received = new StringBuilder();
        var buffer = new byte[64];
        while (received.ToString() != "A\nB\n")
        {
            int n = peer.Receive(buffer);
            Assert.AreNotEqual(0, n, "the device closed the socket early");
            received.Append(Encoding.ASCII.GetString(buffer, 0, n));
        }

        Assert.AreEqual("A\nB\n", received.ToString());
    }

    [TestMethod]
    public void UnixOutputWithoutAListenerSaysToStartOne()
    {
        string path = Path.Combine(_dir, "nobody.sock");
        var e = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", "unix:" + path)));
        StringAssert.Contains(e.Message, "devices[0].output");
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "start a listener");
    }

    [TestMethod]
    public void FileOutputInAMissingDirectoryNamesTheFile()
    {
        string path = Path.Combine(_dir, "missing", "console.log");
        var e = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", "file:" + path)));
        StringAssert.Contains(e.Message, "devices[0].output");
        StringAssert.Contains(e.Message, path);
    }

    [TestMethod]
    [DataRow("tcp:localhost:4444", "is not a serial output")]
    [DataRow("file:", "names no path")]
    [DataRow("unix:", "names no path")]
    public void BadOutputValuesAreRefused(string output, string expected)
    {
        var e = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", output)));
        StringAssert.Contains(e.Message, "devices[0].output");
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void BadPortsAndUnknownKeysAreRefused()
    {
        var tooHigh = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", "null"), ("port", "0xfffc")));
        StringAssert.Contains(tooHigh.Message, "devices[0].port");
        StringAssert.Contains(tooHigh.Message, "0xfffc");

        var notNumber = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", "null"), ("port", "com1")));
        StringAssert.Contains(notNumber.Message, "devices[0].port");

        var unknown = Assert.ThrowsExactly<DeviceConfigException>(() => Create(("output", "null"), ("baud", "115200")));
        StringAssert.Contains(unknown.Message, "devices[0].baud");
        StringAssert.Contains(unknown.Message, "output");
    }

    [TestMethod]
    public void PortAndInstanceIdFollowTheConfig()
    {
        using SerialDevice com2 = Create(("output", "null"), ("port", "0x2f8"));
        Assert.AreEqual((ushort)0x2f8, com2.Ports[0].First);
        Assert.AreEqual(1u, SectionOf(com2).InstanceId, "COM2 is instance 1 by default");

        using SerialDevice custom = Create(("output", "null"), ("port", "0x2f8"), ("instance-id", "7"));
        Assert.AreEqual(7u, SectionOf(custom).InstanceId);
    }
}
