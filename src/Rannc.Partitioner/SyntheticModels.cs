namespace Rannc.Partitioner;

/// <summary>A synthetic model for tests, benchmarks and examples: a graph and its analytic costs.</summary>
/// <param name="Name">Readable name, e.g. <c>bert-24</c>.</param>
/// <param name="Graph">The planning graph.</param>
/// <param name="Costs">Costs from <see cref="AnalyticCostModel"/>.</param>
public sealed record SyntheticModel(string Name, Graph Graph, CostTable Costs);

/// <summary>
/// Builders of synthetic graphs shaped like the samples: a BERT-like encoder (embedding, attention and
/// feed-forward nodes per layer, LM head, loss) and a ResNet-like chain of bottleneck blocks. Sizes are fp32.
/// </summary>
public static class SyntheticModels
{
    private const int FloatBytes = 4;

    /// <summary>A BERT-like model with <paramref name="layers"/> encoder layers (attention and FFN as separate nodes),
    /// a large word embedding and an untied LM head over the vocabulary.</summary>
    public static SyntheticModel BertLike(
        int layers, int hidden = 1024, int sequence = 512, int vocabulary = 30522, double deviceFlopsPerSecond = 100e12)
    {
        var builder = new GraphBuilder();
        long s = sequence, h = hidden, v = vocabulary, heads = Math.Max(1, hidden / 64);
        int ids = builder.Input("input_ids", s * 8);
        int labels = builder.Input("labels", s * 8);
        int x = builder.Node(
            "embeddings", [ids], s * h * FloatBytes, true, 10.0 * s * h, s * h * FloatBytes,
            ("embeddings.word.weight", v * h * FloatBytes), ("embeddings.position.weight", s * h * FloatBytes),
            ("embeddings.norm.weight", 2 * h * FloatBytes));
        for (int l = 0; l < layers; l++)
        {
            x = builder.Node(
                $"layers.{l}.attention", [x], s * h * FloatBytes, true,
                2.0 * s * 4 * h * h + 4.0 * s * s * h,
                4 * s * h * FloatBytes + 2 * heads * s * s * FloatBytes,
                ($"layers.{l}.attention.qkvo.weight", (4 * h * h + 4 * h) * FloatBytes), ($"layers.{l}.attention.norm.weight", 2 * h * FloatBytes));
            x = builder.Node(
                $"layers.{l}.ffn", [x], s * h * FloatBytes, true,
                2.0 * s * 8 * h * h,
                2 * s * 4 * h * FloatBytes,
                ($"layers.{l}.ffn.weight", (8 * h * h + 5 * h) * FloatBytes), ($"layers.{l}.ffn.norm.weight", 2 * h * FloatBytes));
        }

        int logits = builder.Node(
            "lm_head", [x], s * v * FloatBytes, true, 2.0 * s * h * v + 2.0 * s * h * h, s * h * FloatBytes,
            ("lm_head.transform.weight", (h * h + 3 * h) * FloatBytes), ("lm_head.decoder.weight", (v * h + v) * FloatBytes));
        builder.Node("loss", [logits, labels], 0, true, 5.0 * s * v, s * v * FloatBytes, fixedOutputBytes: FloatBytes);
        return builder.Build($"bert-{layers}", deviceFlopsPerSecond);
    }

    /// <summary>A ResNet-like chain: stem, bottleneck blocks in four stages (<paramref name="blocksPerStage"/>) with
    /// widths multiplied by <paramref name="widthFactor"/>, pooling + classifier, loss. Early blocks hold large
    /// activations, late blocks large parameters.</summary>
    public static SyntheticModel ResNetLike(
        IReadOnlyList<int>? blocksPerStage = null, int widthFactor = 1, int imageSize = 224, int classes = 1000,
        double deviceFlopsPerSecond = 100e12)
    {
        blocksPerStage ??= [3, 4, 6, 3];
        var builder = new GraphBuilder();
        long pixels = (long)imageSize * imageSize;
        int image = builder.Input("images", 3 * pixels * FloatBytes);
        int labels = builder.Input("labels", 8);
        long stemChannels = 64L * widthFactor, side = imageSize / 4;
        int x = builder.Node(
            "stem", [image], stemChannels * side * side * FloatBytes, true,
            2.0 * (imageSize / 2) * (imageSize / 2) * 3 * 49 * stemChannels, 2 * stemChannels * (imageSize / 2) * (imageSize / 2) * FloatBytes,
            ("stem.conv.weight", 3 * 49 * stemChannels * FloatBytes));
        long inChannels = stemChannels;
        for (int stage = 0; stage < blocksPerStage.Count; stage++)
        {
            long mid = 64L * widthFactor << stage, outChannels = mid * 4;
            if (stage > 0)
            {
                side /= 2;
            }

            for (int b = 0; b < blocksPerStage[stage]; b++)
            {
                long area = side * side;
                long weights = inChannels * mid + 9 * mid * mid + mid * outChannels + (b == 0 ? inChannels * outChannels : 0);
                x = builder.Node(
                    $"layer{stage + 1}.{b}", [x], outChannels * area * FloatBytes, true,
                    2.0 * area * weights, (2 * mid + outChannels) * area * FloatBytes,
                    ($"layer{stage + 1}.{b}.weight", weights * FloatBytes));
                inChannels = outChannels;
            }
        }

        int logits = builder.Node(
            "fc", [x], classes * FloatBytes, true, 2.0 * inChannels * classes + inChannels * side * side, inChannels * FloatBytes,
            ("fc.weight", (inChannels * classes + classes) * FloatBytes));
        builder.Node("loss", [logits, labels], 0, true, 5.0 * classes, 0, fixedOutputBytes: FloatBytes);
        return builder.Build($"resnet-{blocksPerStage.Sum()}x{widthFactor}", deviceFlopsPerSecond);
    }

    /// <summary>A chain of <paramref name="nodes"/> identical nodes: each reads the previous output, owns
    /// <paramref name="parameterBytes"/> of parameters, and takes <paramref name="forwardSecondsPerSample"/> forward
    /// and twice that backward per sample.</summary>
    public static SyntheticModel UniformChain(
        int nodes, double forwardSecondsPerSample, long parameterBytes, long activationBytesPerSample)
    {
        var builder = new GraphBuilder();
        int x = builder.Input("x", activationBytesPerSample);
        for (int i = 0; i < nodes; i++)
        {
            x = builder.Node($"layer{i}", [x], activationBytesPerSample, true, forwardSecondsPerSample, 0, ($"layer{i}.weight", parameterBytes));
        }

        return builder.Build($"chain-{nodes}", deviceFlopsPerSecond: 1);
    }

    /// <summary>Accumulates nodes, values and parameters in topological order.</summary>
    private sealed class GraphBuilder
    {
        private readonly List<GraphNode> _nodes = [];
        private readonly List<GraphValue> _values = [];
        private readonly List<GraphParameter> _parameters = [];
        private readonly List<int> _inputs = [];
        private readonly List<double> _flops = [];
        private readonly List<long> _saved = [];
        private int _lastOutput = -1;

        public int Input(string name, long bytesPerSample)
        {
            int id = _values.Count;
            _values.Add(new GraphValue(id, name, bytesPerSample, 0, RequiresGrad: false));
            _inputs.Add(id);
            return id;
        }

        public int Node(
            string name, IReadOnlyList<int> inputs, long outputBytesPerSample, bool requiresGrad, double forwardFlopsPerSample,
            long savedBytesPerSample, params (string Name, long Bytes)[] parameters) =>
            Node(name, inputs, outputBytesPerSample, requiresGrad, forwardFlopsPerSample, savedBytesPerSample, 0, parameters);

        public int Node(
            string name, IReadOnlyList<int> inputs, long outputBytesPerSample, bool requiresGrad, double forwardFlopsPerSample,
            long savedBytesPerSample, long fixedOutputBytes, params (string Name, long Bytes)[] parameters)
        {
            int output = _values.Count;
            _values.Add(new GraphValue(output, name, outputBytesPerSample, fixedOutputBytes, requiresGrad));
            var parameterIds = new List<int>();
            foreach ((string parameterName, long bytes) in parameters)
            {
                parameterIds.Add(_parameters.Count);
                _parameters.Add(new GraphParameter(_parameters.Count, parameterName, bytes, Trainable: true));
            }

            _nodes.Add(new GraphNode(_nodes.Count, name, "Module", inputs, [output], parameterIds));
            _flops.Add(forwardFlopsPerSample);
            _saved.Add(savedBytesPerSample);
            _lastOutput = output;
            return output;
        }

        public SyntheticModel Build(string name, double deviceFlopsPerSecond)
        {
            var graph = new Graph(_nodes, _values, _parameters, _inputs, [_lastOutput]);
            CostTable costs = AnalyticCostModel.Build(_flops, deviceFlopsPerSecond, backwardToForwardRatio: 2, perNodeOverheadSeconds: 0, _saved);
            return new SyntheticModel(name, graph, costs);
        }
    }
}
