using System.Reflection;
using Rannc.Generators.Model;

namespace Rannc.Generators.Tests.Generator;

/// <summary>
/// The incremental pipeline caches parse results by value. A symbol, syntax node, semantic model or location in the model
/// would keep whole compilations alive and make every run look changed, so the model must hold none.
/// </summary>
public sealed class ModelPurityTests
{
    [Fact]
    public void CaptureModel_ReachesOnlyStringsNumbersAndModelTypes()
    {
        var seen = new HashSet<Type>();
        var pending = new Stack<Type>([typeof(CaptureModel)]);
        while (pending.Count > 0)
        {
            var type = pending.Pop();
            if (!seen.Add(type))
            {
                continue;
            }
            Assert.False(
                type.Namespace?.StartsWith("Microsoft.CodeAnalysis", StringComparison.Ordinal) ?? false,
                $"{type.FullName} from Roslyn is reachable from the generator model");
            if (type.IsPrimitive || type == typeof(string) || type.IsEnum)
            {
                continue;
            }
            Assert.True(type.Namespace?.StartsWith("Rannc.Generators", StringComparison.Ordinal) ?? false,
                $"{type.FullName} is reachable from the generator model; use strings, numbers or EquatableArray of model records");
            foreach (var argument in type.GetGenericArguments())
            {
                pending.Push(argument);
            }
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic))
            {
                pending.Push(field.FieldType.IsArray ? field.FieldType.GetElementType()! : field.FieldType);
            }
            foreach (var derived in typeof(StepModel).Assembly.GetTypes().Where(t => t.BaseType == type))
            {
                pending.Push(derived);
            }
        }
        Assert.Contains(typeof(NodeModel), seen);
        Assert.Contains(typeof(LoopModel), seen);
        Assert.Contains(typeof(BranchModel), seen);
    }

    [Fact]
    public void CaptureModel_FromEqualSources_AreEqual()
    {
        const string Source = """
            using Rannc;
            using TorchSharp;
            using static TorchSharp.torch;
            using static TorchSharp.torch.nn;

            [RaNNC]
            public partial class Net : Module<Tensor, Tensor>
            {
                public Net() : base("net") { }
                public override Tensor forward(Tensor x) => functional.relu(x) * 2;
            }
            """;
        CaptureModel? Parse()
        {
            var compilation = CompilationHelper.CreateCompilation(Source);
            var type = compilation.GetTypeByMetadataName("Net")!;
            var known = Parsing.KnownSymbols.Create(compilation);
            return Parsing.ModuleParser.Parse(type, known, tree => compilation.GetSemanticModel(tree), CancellationToken.None).Model;
        }

        var first = Parse();
        var second = Parse();

        Assert.NotNull(first);
        Assert.Equal(first, second);
        Assert.Equal(first!.GetHashCode(), second!.GetHashCode());
    }
}
