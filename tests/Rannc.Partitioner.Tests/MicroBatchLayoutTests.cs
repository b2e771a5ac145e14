using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

public class MicroBatchLayoutTests
{
    [Fact]
    public void Slices_PartitionEveryMicroBatch_AndTransfersCoverEverySampleOnce()
    {
        var random = new Random(5);
        for (int trial = 0; trial < 200; trial++)
        {
            int batch = random.Next(1, 60), microBatches = random.Next(1, batch + 1);
            var layout = new MicroBatchLayout(batch, microBatches);
            int from = random.Next(1, layout.SmallestMicroBatch + 1), to = random.Next(1, layout.SmallestMicroBatch + 1);
            int next = 0;
            for (int m = 0; m < microBatches; m++)
            {
                Assert.Equal(next, layout.MicroBatchStart(m));
                int covered = layout.MicroBatchStart(m);
                for (int j = 0; j < from; j++)
                {
                    SampleRange slice = layout.ReplicaSlice(m, from, j);
                    Assert.Equal(covered, slice.Start);
                    Assert.InRange(slice.Count, 1, layout.LargestSlice(from));
                    covered = slice.End;
                }

                next += layout.MicroBatchSize(m);
                Assert.Equal(next, covered);
                int sent = layout.MicroBatchStart(m);
                foreach (SliceTransfer t in layout.Transfers(m, from, to))
                {
                    Assert.Equal(sent, t.Samples.Start);
                    sent = t.Samples.End;
                }

                Assert.Equal(next, sent);
            }

            Assert.Equal(batch, next);
        }
    }
}
