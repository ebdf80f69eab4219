using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma.Tests;

/// <summary>
/// Compiles a C program against the real rdma-core headers and compares every size, offset and
/// constant the bindings marshal. Each check's name is the C expression itself, so the program is
/// generated from the same list the managed side is read from.
/// </summary>
[TestClass]
public sealed class AbiTests
{
    internal const string InstallHeaders =
        "apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends libibverbs-dev librdmacm-dev";

    private static long Off<T>(string field) => Marshal.OffsetOf<T>(field).ToInt64();

    /// <summary>(C expression, what the bindings use).</summary>
    private static IEnumerable<(string Expression, long Managed)> Checks()
    {
        yield return ("sizeof(struct ibv_sge)", Unsafe.SizeOf<IbvSge>());
        yield return ("offsetof(struct ibv_sge, addr)", Off<IbvSge>(nameof(IbvSge.Addr)));
        yield return ("offsetof(struct ibv_sge, length)", Off<IbvSge>(nameof(IbvSge.Length)));
        yield return ("offsetof(struct ibv_sge, lkey)", Off<IbvSge>(nameof(IbvSge.Lkey)));

        yield return ("sizeof(struct ibv_send_wr)", Unsafe.SizeOf<IbvSendWr>());
        yield return ("offsetof(struct ibv_send_wr, wr_id)", Off<IbvSendWr>(nameof(IbvSendWr.WrId)));
        yield return ("offsetof(struct ibv_send_wr, next)", Off<IbvSendWr>(nameof(IbvSendWr.Next)));
        yield return ("offsetof(struct ibv_send_wr, sg_list)", Off<IbvSendWr>(nameof(IbvSendWr.SgList)));
        yield return ("offsetof(struct ibv_send_wr, num_sge)", Off<IbvSendWr>(nameof(IbvSendWr.NumSge)));
        yield return ("offsetof(struct ibv_send_wr, opcode)", Off<IbvSendWr>(nameof(IbvSendWr.Opcode)));
        yield return ("offsetof(struct ibv_send_wr, send_flags)", Off<IbvSendWr>(nameof(IbvSendWr.SendFlags)));
        yield return ("offsetof(struct ibv_send_wr, imm_data)", Off<IbvSendWr>(nameof(IbvSendWr.ImmData)));
        yield return ("offsetof(struct ibv_send_wr, wr.rdma.remote_addr)", Off<IbvSendWr>(nameof(IbvSendWr.RdmaRemoteAddr)));
        yield return ("offsetof(struct ibv_send_wr, wr.rdma.rkey)", Off<IbvSendWr>(nameof(IbvSendWr.RdmaRkey)));

        yield return ("sizeof(struct ibv_recv_wr)", Unsafe.SizeOf<IbvRecvWr>());
        yield return ("offsetof(struct ibv_recv_wr, wr_id)", Off<IbvRecvWr>(nameof(IbvRecvWr.WrId)));
        yield return ("offsetof(struct ibv_recv_wr, next)", Off<IbvRecvWr>(nameof(IbvRecvWr.Next)));
        yield return ("offsetof(struct ibv_recv_wr, sg_list)", Off<IbvRecvWr>(nameof(IbvRecvWr.SgList)));
        yield return ("offsetof(struct ibv_recv_wr, num_sge)", Off<IbvRecvWr>(nameof(IbvRecvWr.NumSge)));

        yield return ("sizeof(struct ibv_wc)", Unsafe.SizeOf<IbvWc>());
        yield return ("offsetof(struct ibv_wc, wr_id)", Off<IbvWc>(nameof(IbvWc.WrId)));
        yield return ("offsetof(struct ibv_wc, status)", Off<IbvWc>(nameof(IbvWc.Status)));
        yield return ("offsetof(struct ibv_wc, opcode)", Off<IbvWc>(nameof(IbvWc.Opcode)));
        yield return ("offsetof(struct ibv_wc, vendor_err)", Off<IbvWc>(nameof(IbvWc.VendorErr)));
        yield return ("offsetof(struct ibv_wc, byte_len)", Off<IbvWc>(nameof(IbvWc.ByteLen)));
        yield return ("offsetof(struct ibv_wc, imm_data)", Off<IbvWc>(nameof(IbvWc.ImmData)));
        yield return ("offsetof(struct ibv_wc, qp_num)", Off<IbvWc>(nameof(IbvWc.QpNum)));
        yield return ("offsetof(struct ibv_wc, src_qp)", Off<IbvWc>(nameof(IbvWc.SrcQp)));
        yield return ("offsetof(struct ibv_wc, wc_flags)", Off<IbvWc>(nameof(IbvWc.WcFlags)));

        yield return ("sizeof(struct ibv_qp_cap)", Unsafe.SizeOf<IbvQpCap>());
        yield return ("offsetof(struct ibv_qp_cap, max_send_wr)", Off<IbvQpCap>(nameof(IbvQpCap.MaxSendWr)));
        yield return ("offsetof(struct ibv_qp_cap, max_recv_wr)", Off<IbvQpCap>(nameof(IbvQpCap.MaxRecvWr)));
        yield return ("offsetof(struct ibv_qp_cap, max_send_sge)", Off<IbvQpCap>(nameof(IbvQpCap.MaxSendSge)));
        yield return ("offsetof(struct ibv_qp_cap, max_recv_sge)", Off<IbvQpCap>(nameof(IbvQpCap.MaxRecvSge)));
        yield return ("offsetof(struct ibv_qp_cap, max_inline_data)", Off<IbvQpCap>(nameof(IbvQpCap.MaxInlineData)));

        yield return ("sizeof(struct ibv_qp_init_attr)", Unsafe.SizeOf<IbvQpInitAttr>());
        yield return ("offsetof(struct ibv_qp_init_attr, qp_context)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.QpContext)));
        yield return ("offsetof(struct ibv_qp_init_attr, send_cq)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.SendCq)));
        yield return ("offsetof(struct ibv_qp_init_attr, recv_cq)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.RecvCq)));
        yield return ("offsetof(struct ibv_qp_init_attr, srq)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.Srq)));
        yield return ("offsetof(struct ibv_qp_init_attr, cap)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.Cap)));
        yield return ("offsetof(struct ibv_qp_init_attr, qp_type)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.QpType)));
        yield return ("offsetof(struct ibv_qp_init_attr, sq_sig_all)", Off<IbvQpInitAttr>(nameof(IbvQpInitAttr.SqSigAll)));

        // The ops table the inline data-path functions call through, and the pointers that lead to it.
        yield return ("offsetof(struct ibv_context, ops.poll_cq)", VerbsLayout.ContextPollCq);
        yield return ("offsetof(struct ibv_context, ops.req_notify_cq)", VerbsLayout.ContextReqNotifyCq);
        yield return ("offsetof(struct ibv_context, ops.post_send)", VerbsLayout.ContextPostSend);
        yield return ("offsetof(struct ibv_context, ops.post_recv)", VerbsLayout.ContextPostRecv);
        yield return ("offsetof(struct ibv_qp, context)", VerbsLayout.QpContext);
        yield return ("offsetof(struct ibv_qp, qp_num)", VerbsLayout.QpNum);
        yield return ("offsetof(struct ibv_cq, context)", VerbsLayout.CqContext);
        yield return ("offsetof(struct ibv_comp_channel, fd)", VerbsLayout.CompChannelFd);
        yield return ("offsetof(struct ibv_mr, lkey)", VerbsLayout.MrLkey);
        yield return ("offsetof(struct ibv_mr, rkey)", VerbsLayout.MrRkey);

        yield return ("sizeof(struct rdma_conn_param)", Unsafe.SizeOf<RdmaConnParam>());
        yield return ("offsetof(struct rdma_conn_param, private_data)", Off<RdmaConnParam>(nameof(RdmaConnParam.PrivateData)));
        yield return ("offsetof(struct rdma_conn_param, private_data_len)", Off<RdmaConnParam>(nameof(RdmaConnParam.PrivateDataLen)));
        yield return ("offsetof(struct rdma_conn_param, responder_resources)", Off<RdmaConnParam>(nameof(RdmaConnParam.ResponderResources)));
        yield return ("offsetof(struct rdma_conn_param, initiator_depth)", Off<RdmaConnParam>(nameof(RdmaConnParam.InitiatorDepth)));
        yield return ("offsetof(struct rdma_conn_param, flow_control)", Off<RdmaConnParam>(nameof(RdmaConnParam.FlowControl)));
        yield return ("offsetof(struct rdma_conn_param, retry_count)", Off<RdmaConnParam>(nameof(RdmaConnParam.RetryCount)));
        yield return ("offsetof(struct rdma_conn_param, rnr_retry_count)", Off<RdmaConnParam>(nameof(RdmaConnParam.RnrRetryCount)));
        yield return ("offsetof(struct rdma_conn_param, srq)", Off<RdmaConnParam>(nameof(RdmaConnParam.Srq)));
        yield return ("offsetof(struct rdma_conn_param, qp_num)", Off<RdmaConnParam>(nameof(RdmaConnParam.QpNum)));

        yield return ("offsetof(struct rdma_cm_event, id)", Off<RdmaCmEvent>(nameof(RdmaCmEvent.Id)));
        yield return ("offsetof(struct rdma_cm_event, listen_id)", Off<RdmaCmEvent>(nameof(RdmaCmEvent.ListenId)));
        yield return ("offsetof(struct rdma_cm_event, event)", Off<RdmaCmEvent>(nameof(RdmaCmEvent.Event)));
        yield return ("offsetof(struct rdma_cm_event, status)", Off<RdmaCmEvent>(nameof(RdmaCmEvent.Status)));
        yield return ("offsetof(struct rdma_cm_event, param.conn)", Off<RdmaCmEvent>(nameof(RdmaCmEvent.Conn)));
        yield return ("offsetof(struct rdma_cm_id, verbs)", RdmaCmLayout.IdVerbs);
        yield return ("offsetof(struct rdma_cm_id, qp)", RdmaCmLayout.IdQp);
        yield return ("offsetof(struct rdma_cm_id, route.addr.dst_addr)", RdmaCmLayout.IdPeerAddress);
        yield return ("offsetof(struct rdma_event_channel, fd)", RdmaCmLayout.EventChannelFd);
        yield return ("sizeof(struct sockaddr_in)", RdmaCmLayout.SockaddrIn);
        yield return ("sizeof(struct sockaddr_in6)", RdmaCmLayout.SockaddrIn6);

        yield return ("IBV_ACCESS_LOCAL_WRITE", VerbsConstants.IBV_ACCESS_LOCAL_WRITE);
        yield return ("IBV_ACCESS_REMOTE_WRITE", VerbsConstants.IBV_ACCESS_REMOTE_WRITE);
        yield return ("IBV_ACCESS_REMOTE_READ", VerbsConstants.IBV_ACCESS_REMOTE_READ);
        yield return ("IBV_WR_RDMA_WRITE", VerbsConstants.IBV_WR_RDMA_WRITE);
        yield return ("IBV_WR_SEND", VerbsConstants.IBV_WR_SEND);
        yield return ("IBV_WR_SEND_WITH_IMM", VerbsConstants.IBV_WR_SEND_WITH_IMM);
        yield return ("IBV_WR_RDMA_READ", VerbsConstants.IBV_WR_RDMA_READ);
        yield return ("IBV_SEND_SIGNALED", VerbsConstants.IBV_SEND_SIGNALED);
        yield return ("IBV_WC_SUCCESS", VerbsConstants.IBV_WC_SUCCESS);
        yield return ("IBV_WC_WR_FLUSH_ERR", VerbsConstants.IBV_WC_WR_FLUSH_ERR);
        yield return ("IBV_WC_SEND", VerbsConstants.IBV_WC_SEND);
        yield return ("IBV_WC_RDMA_READ", VerbsConstants.IBV_WC_RDMA_READ);
        yield return ("IBV_WC_RECV", VerbsConstants.IBV_WC_RECV);
        yield return ("IBV_WC_WITH_IMM", VerbsConstants.IBV_WC_WITH_IMM);
        yield return ("IBV_QPT_RC", VerbsConstants.IBV_QPT_RC);
        yield return ("RDMA_PS_TCP", RdmaCmConstants.RDMA_PS_TCP);
        yield return ("RDMA_CM_EVENT_ADDR_RESOLVED", RdmaCmConstants.RDMA_CM_EVENT_ADDR_RESOLVED);
        yield return ("RDMA_CM_EVENT_ADDR_ERROR", RdmaCmConstants.RDMA_CM_EVENT_ADDR_ERROR);
        yield return ("RDMA_CM_EVENT_ROUTE_RESOLVED", RdmaCmConstants.RDMA_CM_EVENT_ROUTE_RESOLVED);
        yield return ("RDMA_CM_EVENT_ROUTE_ERROR", RdmaCmConstants.RDMA_CM_EVENT_ROUTE_ERROR);
        yield return ("RDMA_CM_EVENT_CONNECT_REQUEST", RdmaCmConstants.RDMA_CM_EVENT_CONNECT_REQUEST);
        yield return ("RDMA_CM_EVENT_CONNECT_RESPONSE", RdmaCmConstants.RDMA_CM_EVENT_CONNECT_RESPONSE);
        yield return ("RDMA_CM_EVENT_CONNECT_ERROR", RdmaCmConstants.RDMA_CM_EVENT_CONNECT_ERROR);
        yield return ("RDMA_CM_EVENT_UNREACHABLE", RdmaCmConstants.RDMA_CM_EVENT_UNREACHABLE);
        yield return ("RDMA_CM_EVENT_REJECTED", RdmaCmConstants.RDMA_CM_EVENT_REJECTED);
        yield return ("RDMA_CM_EVENT_ESTABLISHED", RdmaCmConstants.RDMA_CM_EVENT_ESTABLISHED);
        yield return ("RDMA_CM_EVENT_DISCONNECTED", RdmaCmConstants.RDMA_CM_EVENT_DISCONNECTED);
        yield return ("RDMA_CM_EVENT_DEVICE_REMOVAL", RdmaCmConstants.RDMA_CM_EVENT_DEVICE_REMOVAL);
        yield return ("RDMA_CM_EVENT_TIMEWAIT_EXIT", RdmaCmConstants.RDMA_CM_EVENT_TIMEWAIT_EXIT);
        yield return ("AF_INET", RdmaCmConstants.AF_INET);
        yield return ("AF_INET6", RdmaCmConstants.AF_INET6);
        yield return ("POLLIN", Libc.POLLIN);
        yield return ("EINTR", Libc.EINTR);
        yield return ("sizeof(struct pollfd)", Unsafe.SizeOf<Libc.PollFd>());
    }

    [TestMethod]
    public void EverySizeOffsetAndConstantMatchesTheRdmaCoreHeaders()
    {
        List<(string Expression, long Managed)> checks = [.. Checks()];
        var source = new StringBuilder("""
            #include <stddef.h>
            #include <stdio.h>
            #include <errno.h>
            #include <poll.h>
            #include <netinet/in.h>
            #include <infiniband/verbs.h>
            #include <rdma/rdma_cma.h>
            int main(void) {

            """);
        foreach ((string expression, _) in checks)
        {
            source.Append(CultureInfo.InvariantCulture, $"  printf(\"%lld\\n\", (long long)({expression}));\n");
        }

        source.Append("  return 0;\n}\n");
        string[] native = CompileAndRun(source.ToString());
        Assert.HasCount(checks.Count, native, "The C program printed a different number of values.");

        var mismatches = new List<string>();
        for (int i = 0; i < checks.Count; i++)
        {
            if (long.Parse(native[i], CultureInfo.InvariantCulture) != checks[i].Managed)
            {
                mismatches.Add($"{checks[i].Expression}: C says {native[i]}, the bindings use {checks[i].Managed}");
            }
        }

        Assert.IsEmpty(mismatches, "ABI mismatches:\n" + string.Join("\n", mismatches));
    }

    [TestMethod]
    public void SockaddrBytesMatchTheCLayout()
    {
        string[] native = CompileAndRun("""
            #include <stdio.h>
            #include <string.h>
            #include <arpa/inet.h>
            #include <netinet/in.h>
            static void dump(const void *p, size_t n) {
              for (size_t i = 0; i < n; i++) printf("%02x", ((const unsigned char *)p)[i]);
              printf("\n");
            }
            int main(void) {
              struct sockaddr_in a; memset(&a, 0, sizeof a);
              a.sin_family = AF_INET; a.sin_port = htons(4444); inet_pton(AF_INET, "10.1.2.3", &a.sin_addr);
              dump(&a, sizeof a);
              struct sockaddr_in6 b; memset(&b, 0, sizeof b);
              b.sin6_family = AF_INET6; b.sin6_port = htons(18515); inet_pton(AF_INET6, "fe80::1", &b.sin6_addr); b.sin6_scope_id = 3;
              dump(&b, sizeof b);
              return 0;
            }
            """);
        var v4 = new RdmaEndpointAddress(IPAddress.Parse("10.1.2.3"), 4444);
        var v6 = new RdmaEndpointAddress(IPAddress.Parse("fe80::1%3"), 18515);
        Assert.AreEqual(native[0], Convert.ToHexStringLower(v4.ToSockaddr()));
        Assert.AreEqual(native[1], Convert.ToHexStringLower(v6.ToSockaddr()));
    }

    /// <summary>Compiles <paramref name="source"/> with gcc (no libraries linked) and returns its output lines.</summary>
    private static string[] CompileAndRun(string source)
    {
        string[] headers = ["/usr/include/infiniband/verbs.h", "/usr/include/rdma/rdma_cma.h"];
        if (headers.FirstOrDefault(h => !File.Exists(h)) is { } missing)
        {
            Assert.Inconclusive($"{missing} is missing: install the rdma-core headers (libraries and headers only, not the rdma-core package): {InstallHeaders}");
        }

        string directory = Directory.CreateTempSubdirectory("modular-rdma-abi-").FullName;
        try
        {
            string cFile = Path.Combine(directory, "abi.c");
            string exe = Path.Combine(directory, "abi");
            File.WriteAllText(cFile, source);
            (int gccExit, string gccOutput) = Run("gcc", $"-std=gnu11 -Wall -o {exe} {cFile}");
            if (gccExit == 127)
            {
                Assert.Inconclusive("gcc is not installed: apt-get install -y gcc libc6-dev");
            }

            Assert.AreEqual(0, gccExit, "gcc failed:\n" + gccOutput);
            (int exit, string output) = Run(exe, "");
            Assert.AreEqual(0, exit, output);
            return output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static (int Exit, string Output) Run(string file, string arguments)
    {
        var start = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return (127, $"{file} not found");
        }

        using (process)
        {
            Task<string> stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, stdout + stderr.Result);
        }
    }
}
