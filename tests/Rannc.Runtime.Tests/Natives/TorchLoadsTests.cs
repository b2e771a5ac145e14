using TorchSharp;

namespace Rannc.Tests.Natives;

public class TorchLoadsTests
{
    [Fact]
    public void MatrixProduct_RunsInTheTestProcess()
    {
        using var a = torch.tensor(new double[] { 1, 2, 3, 4 }, 2, 2);
        using var b = torch.tensor(new double[] { 5, 6, 7, 8 }, 2, 2);
        using var c = torch.matmul(a, b);
        Assert.Equal(new double[] { 19, 22, 43, 50 }, c.data<double>().ToArray());
    }
}
