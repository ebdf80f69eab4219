// The conformance tests count file descriptors and move a gigabyte: keep them sequential.
[assembly: DoNotParallelize]
