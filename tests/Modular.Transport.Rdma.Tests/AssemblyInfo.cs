// The data-path tests open RDMA devices and ports; keep the assembly sequential.
[assembly: DoNotParallelize]
