using Modular.Core.Memory;

namespace Modular.Tests.Memory;

[TestClass]
public sealed class DirtyBitmapTests
{
    [TestMethod]
    public void SetTestAndClearCount()
    {
        var bitmap = new DirtyBitmap(130);
        bitmap.Set(0);
        bitmap.Set(63);
        bitmap.Set(64);
        bitmap.Set(129);
        Assert.AreEqual(4, bitmap.Count());
        Assert.IsTrue(bitmap.Test(63));
        Assert.IsFalse(bitmap.Test(62));
        Assert.IsTrue(bitmap.TestAndClear(63));
        Assert.IsFalse(bitmap.TestAndClear(63));
        CollectionAssert.AreEqual(new long[] { 0, 64, 129 }, bitmap.EnumerateSet().ToArray());
        Assert.AreEqual(-1, bitmap.NextSet(130));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => bitmap.Set(130));
    }

    [TestMethod]
    public void SetRangeAndSetAllStayInsideTheLength()
    {
        var bitmap = new DirtyBitmap(200);
        bitmap.SetRange(60, 70);
        Assert.AreEqual(70, bitmap.Count());
        Assert.AreEqual(60, bitmap.NextSet(0));
        Assert.AreEqual(129, bitmap.EnumerateSet().Last());
        bitmap.SetAll();
        Assert.AreEqual(200, bitmap.Count());
        Assert.AreEqual(0UL, bitmap.Words[3] >> 8, "bits past the length must stay clear");
        bitmap.ClearAll();
        Assert.AreEqual(0, bitmap.Count());
    }

    [TestMethod]
    public void OrBitsAtAnUnalignedOffsetAndDrainInto()
    {
        var bitmap = new DirtyBitmap(300);
        ulong[] source = [0x8000_0000_0000_0001UL, 0x3UL]; // bits 0, 63, 64, 65
        bitmap.OrBits(10, source, 66);
        CollectionAssert.AreEqual(new long[] { 10, 73, 74, 75 }, bitmap.EnumerateSet().ToArray());

        bitmap.OrBits(128, source, 64); // aligned; bit 64 of source is past bitCount and ignored
        CollectionAssert.AreEqual(new long[] { 10, 73, 74, 75, 128, 191 }, bitmap.EnumerateSet().ToArray());

        var target = new DirtyBitmap(300);
        target.Set(5);
        bitmap.DrainInto(target);
        Assert.AreEqual(0, bitmap.Count());
        CollectionAssert.AreEqual(new long[] { 5, 10, 73, 74, 75, 128, 191 }, target.EnumerateSet().ToArray());
    }

    [TestMethod]
    public void ConcurrentSettersLoseNoBits()
    {
        var bitmap = new DirtyBitmap(64 * 1024);
        Parallel.For(0, 4, worker =>
        {
            for (long i = worker; i < bitmap.Length; i += 4)
            {
                bitmap.Set(i);
            }
        });
        Assert.AreEqual(bitmap.Length, bitmap.Count());
    }
}
