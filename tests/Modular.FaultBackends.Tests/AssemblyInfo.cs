// Tests arm real memory, block threads in page faults and count this process's descriptors: run them one at a time.
[assembly: DoNotParallelize]
