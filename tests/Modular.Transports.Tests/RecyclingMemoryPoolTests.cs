extern alias tcp;

using System.Buffers;
using System.Runtime.InteropServices;
using RecyclingMemoryPool = tcp::Modular.Transports.Shared.RecyclingMemoryPool;

namespace Modular.Transports.Tests;

/// <summary>
/// The socket pipes' segment pool: a block given back on one thread is handed out on another
/// without an allocation (the default pool allocated a fresh 256 KiB array there, and a collection
/// with it, inside a postcopy source's first requested page); oversized and surplus blocks are not
/// kept, a block gives itself back once, and a block used after it went back says so.
/// </summary>
[TestClass]
public sealed class RecyclingMemoryPoolTests
{
    private const int BlockSize = 64 * 1024;

    [TestMethod]
    public async Task ABlockGivenBackOnOneThreadIsRentedOnAnotherWithoutAllocating()
    {
        var pool = new RecyclingMemoryPool(BlockSize, maxFree: 4);
        byte[] first = await Task.Factory.StartNew(() =>
        {
            using IMemoryOwner<byte> owner = pool.Rent(BlockSize);
            return ArrayOf(owner);
        }, TaskCreationOptions.LongRunning);
        Assert.AreEqual(1, pool.FreeCount, "the block went back to the pool");

        (byte[] second, long allocated) = await Task.Factory.StartNew(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            IMemoryOwner<byte> owner = pool.Rent(100);
            long after = GC.GetAllocatedBytesForCurrentThread();
            byte[] array = ArrayOf(owner);
            owner.Dispose();
            return (array, after - before);
        }, TaskCreationOptions.LongRunning);

        Assert.AreSame(first, second, "another thread got the same block back");
        Assert.AreEqual(0, allocated, "renting a free block allocates nothing");
        Assert.AreEqual(BlockSize, second.Length);
    }

    [TestMethod]
    public void AnOversizedRequestGetsABlockOfItsOwnThatIsNotKept()
    {
        var pool = new RecyclingMemoryPool(BlockSize, maxFree: 4);
        IMemoryOwner<byte> big = pool.Rent(BlockSize + 1);
        Assert.IsTrue(big.Memory.Length >= BlockSize + 1, "large enough");
        big.Dispose();
        Assert.AreEqual(0, pool.FreeCount, "an oversized block is left to the GC");
    }

    [TestMethod]
    public void FreeBlocksAreCappedAndABlockGoesBackOnce()
    {
        var pool = new RecyclingMemoryPool(BlockSize, maxFree: 2);
        IMemoryOwner<byte>[] owners = [pool.Rent(), pool.Rent(), pool.Rent()];
        foreach (IMemoryOwner<byte> owner in owners)
        {
            owner.Dispose();
        }

        Assert.AreEqual(2, pool.FreeCount, "no more than maxFree are kept");
        owners[0].Dispose();
        Assert.AreEqual(2, pool.FreeCount, "a second Dispose gives nothing back");

        IMemoryOwner<byte> a = pool.Rent(), b = pool.Rent();
        Assert.AreNotSame(ArrayOf(a), ArrayOf(b), "two rents never share a block");
        Assert.AreEqual(0, pool.FreeCount);
    }

    [TestMethod]
    public void ABlockUsedAfterItWentBackThrows()
    {
        var pool = new RecyclingMemoryPool(BlockSize, maxFree: 2);
        IMemoryOwner<byte> owner = pool.Rent();
        owner.Dispose();
        Assert.ThrowsExactly<ObjectDisposedException>(() => owner.Memory);
    }

    [TestMethod]
    public void EnsureFreeFillsUpToTheCountAndNoFurther()
    {
        var pool = new RecyclingMemoryPool(BlockSize, maxFree: 3);
        pool.EnsureFree(2);
        Assert.AreEqual(2, pool.FreeCount);
        pool.EnsureFree(1);
        Assert.AreEqual(2, pool.FreeCount, "already enough");
        pool.EnsureFree(10);
        Assert.AreEqual(3, pool.FreeCount, "never beyond maxFree");
    }

    [TestMethod]
    public unsafe void EnsureFreeHandsOutBlocksWhoseMemoryIsAlreadyThere()
    {
        const int Large = 4 << 20; // large-object heap: fresh memory from the kernel, not yet touched
        var pool = new RecyclingMemoryPool(Large, maxFree: 2);
        pool.EnsureFree(2);
        using IMemoryOwner<byte> first = pool.Rent(Large);
        using IMemoryOwner<byte> second = pool.Rent(Large);
        foreach (byte[] array in new[] { ArrayOf(first), ArrayOf(second) })
        {
            fixed (byte* start = array)
            {
                nint page = Environment.SystemPageSize;
                nint from = (nint)start & ~(page - 1);
                nint to = ((nint)start + array.Length + page - 1) & ~(page - 1);
                byte[] resident = new byte[(to - from) / page];
                fixed (byte* vector = resident)
                {
                    Assert.AreEqual(0, Mincore(from, (nuint)(to - from), vector), "mincore(2) on the block");
                }

                int missing = resident.Count(b => (b & 1) == 0);
                Assert.AreEqual(0, missing, $"{missing} of {resident.Length} pages of a block from EnsureFree are not in memory: a receive into it would fault them in");
            }
        }
    }

    [DllImport("libc", EntryPoint = "mincore", SetLastError = true)]
    private static extern unsafe int Mincore(nint address, nuint length, byte* vector);

    private static byte[] ArrayOf(IMemoryOwner<byte> owner)
    {
        Assert.IsTrue(MemoryMarshal.TryGetArray<byte>(owner.Memory, out ArraySegment<byte> segment));
        return segment.Array!;
    }
}
