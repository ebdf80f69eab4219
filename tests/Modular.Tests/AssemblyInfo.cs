// Tests that start guests or processes share two cores; keep them sequential within the assembly.
[assembly: DoNotParallelize]
