// Socket tests share two cores and count file descriptors; keep them sequential.
[assembly: DoNotParallelize]
