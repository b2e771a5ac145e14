namespace Rannc.Generators.Tests.Generator;

/// <summary>Test models that exercise what the generator must capture; compiled in memory by the tests.</summary>
internal static class FeatureModels
{
    public const string Source = """
        using System;
        using Rannc;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        using static TorchSharp.torch.nn;

        namespace Features;

        public enum Activation { Relu, Gelu, Tanh }

        /// <summary>Two inputs, a tuple result; inlined into Features.</summary>
        [RaNNC]
        public sealed partial class Mixer : Module<Tensor, Tensor, (Tensor, Tensor)>
        {
            private readonly Linear left;
            private readonly Linear right;
            public Mixer(int width) : base(nameof(Mixer))
            {
                left = Linear(width, width);
                right = Linear(width, width);
                RegisterComponents();
            }
            public override (Tensor, Tensor) forward(Tensor a, Tensor b) => (left.call(a) + b, right.forward(b) * a);
        }

        [RaNNC]
        public sealed partial class Features : Module<Tensor, Tensor, Tensor, (Tensor, Tensor)>
        {
            private readonly int width;
            private readonly int repeats;
            private readonly Activation activation;
            private readonly bool useBias;
            private readonly string pooling;
            private readonly Linear input;
            private readonly ModuleList<Linear> stack = new();
            private readonly Sequential tail;
            private readonly Mixer mixer;
            private readonly Parameter scale;
            private readonly Tensor offset;

            public Features(int width, int repeats, Activation activation, bool useBias, string pooling) : base(nameof(Features))
            {
                this.width = width;
                this.repeats = repeats;
                this.activation = activation;
                this.useBias = useBias;
                this.pooling = pooling;
                input = Linear(width, width);
                for (var i = 0; i < 3; i++) stack.Add(Linear(width, width));
                tail = Sequential(Linear(width, width), Tanh());
                mixer = new Mixer(width);
                scale = Parameter(torch.ones(width));
                offset = torch.full(width, 0.5);
                RegisterComponents();
            }

            private Linear First => input;

            public override (Tensor, Tensor) forward(Tensor x, Tensor y, Tensor mask)
            {
                using var scope = torch.NewDisposeScope();
                var batch = x.size(0);
                var h = Activate(First.forward(x));
                var skip = h;
                for (var i = 0; i < repeats; i++)
                {
                    h = stack[i % stack.Count].forward(h) + skip * (i + 1);
                }
                foreach (var module in tail.children())
                {
                    h = ((Module<Tensor, Tensor>)module).forward(h);
                }
                h = useBias ? h * scale + offset : h * scale;
                h += 1;
                var (mixedA, mixedB) = mixer.forward(h, y);
                var (maxima, positions) = mixedA.max(1L, keepdim: true);
                var counted = positions.to_type(ScalarType.Float64).sum() + mask.sum();
                Tensor pooled;
                switch (pooling)
                {
                    case "mean":
                        pooled = mixedB.mean(new long[] { 1 });
                        break;
                    case "max":
                        pooled = mixedB.amax(new long[] { 1 });
                        break;
                    default:
                        pooled = mixedB.sum(dim: 1);
                        break;
                }
                var flat = Scale(h.view(batch, -1), 0.5) + pooled.unsqueeze(1);
                var result = flat * maxima + Math.Sqrt(width);
                return (scope.MoveToOuter(result), scope.MoveToOuter(counted));
            }

            private Tensor Activate(Tensor t)
            {
                if (activation == Activation.Relu)
                {
                    return functional.relu(t);
                }
                return activation == Activation.Gelu ? functional.gelu(t) : torch.tanh(t);
            }

            private static Tensor Scale(Tensor t, double factor) => t * factor;
        }
        """;
}
