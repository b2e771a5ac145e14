// libtorch has one random generator per process. RanncModule saves and restores it around profiling (so that
// profiling draws no dropout masks), and tests build seeded models: test classes running in parallel would
// disturb each other's draws, so this assembly runs its tests one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
