// The transport tests count file descriptors and move a lot of data: keep them sequential.
[assembly: DoNotParallelize]
