using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Capture;

/// <summary>
/// Unrolls a <see cref="CaptureTemplate"/> for one module instance: asks the instance for loop trip counts and branch
/// arms, inlines <c>[RaNNC]</c> submodules under their module path (whatever the type of the field that holds them),
/// expands <c>Sequential</c> calls into their children, and names every node, value and parameter.
/// </summary>
internal sealed class GraphBuilder
{
    private readonly List<CapturedNode> _nodes = [];
    private readonly List<CapturedValue> _values = [];
    private readonly List<CapturedParameter> _parameters = [];
    private readonly Dictionary<string, int> _parameterIndex = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _nameUses = new(StringComparer.Ordinal);
    private readonly Dictionary<nn.Module, string> _modulePaths = new(ReferenceEqualityComparer.Instance);
    // Parameters are identified by their storage, not by name or wrapper: a tied weight (head.weight = wte.weight)
    // is listed under two names, and a direct read (wte.weight) returns a new wrapper of the same tensor.
    private readonly Dictionary<TensorIdentity, (string Name, bool IsBuffer, Tensor Tensor)> _tensorNames = [];
    private readonly Dictionary<string, (bool IsBuffer, Tensor Tensor)> _tensorsByName = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _canonicalNames = new(StringComparer.Ordinal);
    private readonly List<ShapeGuard> _guards = [];

    // Concrete values of the first batch, filled only as far as a branch on shapes needs them.
    private object?[]? _sample;
    private int _sampleExecuted;

    // Choices of the branches and loops on shapes made by another rank for the same batch (deferred construction: this
    // rank's model lacks the other stages' parameters, so it cannot run the nodes that decide them).
    private IReadOnlyList<int>? _givenChoices;

    // The other rank's names of every parameter and buffer to the graph's name of its tensor. A parameter of another stage
    // is an empty tensor here, identified only by its wrapper, and a layer may hand out a new wrapper on each read
    // (Embedding.weight): such a read is recognised by its name instead.
    private readonly IReadOnlyDictionary<string, string>? _givenCanonicalNames;

    private GraphBuilder(nn.Module model, IReadOnlyDictionary<string, string>? givenCanonicalNames)
    {
        _givenCanonicalNames = givenCanonicalNames;
        _modulePaths[model] = string.Empty;
        foreach (var (name, module) in model.named_modules())
        {
            _modulePaths.TryAdd(module, name);
        }
        foreach (var (name, parameter) in model.named_parameters())
        {
            AddTensorName(name, isBuffer: false, parameter);
        }
        foreach (var (name, buffer) in model.named_buffers())
        {
            AddTensorName(name, isBuffer: true, buffer);
        }
    }

    private void AddTensorName(string name, bool isBuffer, Tensor tensor)
    {
        if (_givenCanonicalNames is not null && _givenCanonicalNames.TryGetValue(name, out var given) && given != name)
        {
            // Another name of a tensor the other rank found tied, whether or not this rank's wrappers show it.
            _tensorNames.TryAdd(TensorIdentity.Of(tensor), (given, isBuffer, tensor));
            _canonicalNames.TryAdd(name, given);
            return;
        }
        if (!_tensorNames.TryGetValue(TensorIdentity.Of(tensor), out var first))
        {
            first = (name, isBuffer, tensor);
            _tensorNames[TensorIdentity.Of(tensor)] = first;
            _tensorsByName.TryAdd(name, (isBuffer, tensor));
        }
        _canonicalNames.TryAdd(name, first.Name);
    }

    /// <summary>The model's first name for the tensor behind a submodule's parameter or buffer.</summary>
    private string CanonicalName(string modulePath, string localName, Tensor tensor) =>
        _tensorNames.TryGetValue(TensorIdentity.Of(tensor), out var known) ? known.Name
        : _givenCanonicalNames is not null && _givenCanonicalNames.TryGetValue(Join(modulePath, localName), out var given) ? given
        : Join(modulePath, localName);

    public static CapturedGraph Build(nn.Module model, object?[]? sampleInputs = null, IReadOnlyList<int>? guardChoices = null,
        IReadOnlyDictionary<string, string>? canonicalNames = null)
    {
        if (model is not ICapturedModule captured)
        {
            throw new CaptureException(
                $"{model.GetType().FullName} has no captured graph: mark the class [RaNNC] and partial, and reference the Rannc package (it carries the generator).");
        }
        var template = captured.CaptureTemplate;
        if (!template.IsCaptured)
        {
            throw new CaptureException(
                $"forward() of {template.ModuleType} could not be captured at build time:{Environment.NewLine}  "
                + string.Join(Environment.NewLine + "  ", template.Errors));
        }
        if (sampleInputs is not null && sampleInputs.Length != template.Inputs.Length)
        {
            throw new ArgumentException(
                $"forward() of {template.ModuleType} takes {template.Inputs.Length} argument(s) but the sample batch has {sampleInputs.Length}.", nameof(sampleInputs));
        }
        var builder = new GraphBuilder(model, canonicalNames) { _givenChoices = guardChoices };
        var scope = new Scope(null);
        var inputs = new List<int>();
        foreach (var input in template.Inputs)
        {
            var value = template.Values[input];
            var id = builder.NewValue(value.Name, value, producer: -1);
            scope.Bind(input, id);
            inputs.Add(id);
        }
        if (sampleInputs is not null)
        {
            builder._sample = new object?[Math.Max(16, inputs.Count)];
            for (var i = 0; i < inputs.Count; i++)
            {
                builder._sample[inputs[i]] = sampleInputs[i];
            }
        }
        builder.Unroll(captured, template, template.Body, scope, string.Empty, []);
        var outputs = template.Outputs.Select(scope.Lookup).ToList();
        return new CapturedGraph(model, builder._nodes, builder._values, builder._parameters, inputs, outputs, builder._canonicalNames) {
            Guards = builder._guards,
            InputBatching = template.Inputs
                .Select((input, i) => template.InputBatching?.ElementAtOrDefault(i)
                    ?? (template.Values[input].Kind == ValueKind.Tensor ? InputBatch.Along(0) : InputBatch.NotBatched))
                .ToList(),
        };
    }

    /// <summary>
    /// The arm of a branch, or the trip count of a loop, on shapes: runs the graph built so far on the first batch
    /// (without gradients) up to the node that computes it, and records a guard so that later batches are checked.
    /// </summary>
    private int FromShapes(CaptureTemplate template, string description, string location, int templateValue, Scope scope)
    {
        if (_givenChoices is not null)
        {
            if (_guards.Count >= _givenChoices.Count)
            {
                throw new CaptureException(
                    $"forward() of {template.ModuleType} resolves '{description}' at {location} from shapes, but rank 0's graph had only " +
                    $"{_givenChoices.Count} such choice(s): the model built here differs from rank 0's.");
            }
            var given = _givenChoices[_guards.Count];
            _guards.Add(new ShapeGuard(template.ModuleType, description, location, scope.Lookup(templateValue), given));
            return given;
        }
        if (_sample is null)
        {
            throw new CaptureException(
                $"forward() of {template.ModuleType} resolves '{description}' at {location} from the shapes (or optional or non-tensor inputs) of the batch; "
                + "build the graph with a sample batch, CapturedGraph.Build(model, inputs), so that it can be resolved.");
        }
        var value = scope.Lookup(templateValue);
        if (_sample.Length < _values.Count)
        {
            Array.Resize(ref _sample, Math.Max(_values.Count, 2 * _sample.Length));
        }
        using (torch.no_grad())
        {
            if (_sampleExecuted == 0)
            {
                // The nodes may write into their inputs in place: they must not change the caller's batch.
                for (var i = 0; i < _sample.Length; i++)
                {
                    if (_sample[i] is Tensor given)
                    {
                        _sample[i] = given.clone();
                    }
                }
            }
            for (; _sampleExecuted < _nodes.Count; _sampleExecuted++)
            {
                _nodes[_sampleExecuted].Execute(_sample);
            }
        }
        var choice = Convert.ToInt32(_sample[value], CultureInfo.InvariantCulture);
        _guards.Add(new ShapeGuard(template.ModuleType, description, location, value, choice));
        return choice;
    }

    /// <summary>Maps template value ids to concrete value ids; one scope per loop iteration and per inlined module.</summary>
    private sealed class Scope(Scope? parent)
    {
        private readonly Dictionary<int, int> _map = [];

        public void Bind(int templateValue, int value) => _map[templateValue] = value;

        public int Lookup(int templateValue) =>
            _map.TryGetValue(templateValue, out var value) ? value
            : parent is not null ? parent.Lookup(templateValue)
            : throw new InvalidOperationException($"Template value %{templateValue} is used before it is defined; the template is malformed.");
    }

    private int NewValue(string name, TemplateValue template, int producer)
    {
        var id = _values.Count;
        _values.Add(new CapturedValue(id, name, template.Kind, template.TypeName, producer));
        return id;
    }

    private void Unroll(ICapturedModule owner, CaptureTemplate template, TemplateStep[] steps, Scope scope, string prefix, List<int> loopIndices)
    {
        foreach (var step in steps)
        {
            switch (step)
            {
                case TemplateNode node:
                    AddNode(owner, template, node, scope, prefix, loopIndices);
                    break;
                case TemplateLoop loop:
                    var count = loop.DependsOnShapes
                        ? FromShapes(template, loop.Description, loop.Location, loop.Count, scope)
                        : owner.GetLoopCount(loop.Id, loopIndices.ToArray());
                    var carried = loop.CarriedIn.Select(scope.Lookup).ToArray();
                    for (var iteration = 0; iteration < count; iteration++)
                    {
                        var body = new Scope(scope);
                        for (var j = 0; j < carried.Length; j++)
                        {
                            body.Bind(loop.BodyIn[j], carried[j]);
                        }
                        loopIndices.Add(iteration);
                        Unroll(owner, template, loop.Body, body, prefix, loopIndices);
                        loopIndices.RemoveAt(loopIndices.Count - 1);
                        carried = loop.BodyOut.Select(body.Lookup).ToArray();
                    }
                    for (var j = 0; j < carried.Length; j++)
                    {
                        scope.Bind(loop.Results[j], carried[j]);
                    }
                    break;
                case TemplateBranch branch:
                    var armIndex = branch.DependsOnShapes
                        ? FromShapes(template, branch.Description, branch.Location, branch.Selector, scope)
                        : owner.SelectBranch(branch.Id, loopIndices.ToArray());
                    if (armIndex < 0 || armIndex >= branch.Arms.Length)
                    {
                        throw new InvalidOperationException($"Branch {branch.Description} chose arm {armIndex} of {branch.Arms.Length}.");
                    }
                    var arm = branch.Arms[armIndex];
                    var armScope = new Scope(scope);
                    Unroll(owner, template, arm.Body, armScope, prefix, loopIndices);
                    for (var j = 0; j < branch.Results.Length; j++)
                    {
                        scope.Bind(branch.Results[j], armScope.Lookup(arm.Outputs[j]));
                    }
                    break;
                default:
                    throw new InvalidOperationException($"Unknown template step {step.GetType().Name}.");
            }
        }
    }

    private void AddNode(ICapturedModule owner, CaptureTemplate template, TemplateNode node, Scope scope, string prefix, List<int> loopIndices)
    {
        var inputs = node.Inputs.Select(scope.Lookup).ToArray();
        var parameters = new List<string>();
        var buffers = new List<string>();
        string name;
        var modulePath = prefix;
        var modifiesInput = false;
        string? opaqueReason = null;
        switch (node.Kind)
        {
            case NodeKind.Module:
                var module = owner.ResolveTarget(node.Id, loopIndices.ToArray()) as nn.Module
                    ?? throw new InvalidOperationException($"Submodule {node.Target} of {template.ModuleType} is null.");
                modulePath = PathOf(module, prefix, node.Target);
                if (module is ICapturedModule inner && inner.CaptureTemplate.IsCaptured)
                {
                    Inline(inner, node, inputs, scope, modulePath);
                    return;
                }
                if (module is Sequential sequential && SequentialChildren(sequential) is { } children && inputs.Length == 1 && node.Outputs.Length == 1)
                {
                    scope.Bind(node.Outputs[0], ExpandSequential(children, inputs[0], modulePath, node.Location));
                    return;
                }
                name = UniqueName(modulePath);
                AddModuleTensors(module, modulePath, parameters, buffers);
                modifiesInput = InPlace.ModuleMayModifyInput(module);
                opaqueReason = OpaqueReason(module);
                break;
            case NodeKind.Attribute:
                var tensor = owner.ResolveTarget(node.Id, loopIndices.ToArray()) as Tensor;
                if (tensor is not null && _tensorNames.TryGetValue(TensorIdentity.Of(tensor), out var known))
                {
                    (known.IsBuffer ? buffers : parameters).Add(known.Name);
                    name = UniqueName(known.Name);
                }
                else if (tensor is not null && _givenCanonicalNames is not null && _givenCanonicalNames.TryGetValue(Join(prefix, node.Target), out var given)
                    && _tensorsByName.TryGetValue(given, out var named))
                {
                    (named.IsBuffer ? buffers : parameters).Add(given);
                    name = UniqueName(given);
                }
                else
                {
                    name = UniqueName(Join(prefix, node.Target));
                }
                break;
            default:
                name = UniqueName(Join(prefix, OperationName(node)));
                modifiesInput = node.InPlace || (node.Kind == NodeKind.TensorMethod && InPlace.IsInPlaceMethod(node.Operation));
                break;
        }
        var outputs = new int[node.Outputs.Length];
        for (var k = 0; k < outputs.Length; k++)
        {
            var valueName = outputs.Length == 1 ? name : name + "." + k.ToString(CultureInfo.InvariantCulture);
            outputs[k] = NewValue(valueName, template.Values[node.Outputs[k]], _nodes.Count);
            scope.Bind(node.Outputs[k], outputs[k]);
        }
        AddCapturedNode(
            name, node.Kind, node.Operation, modulePath, node.Location, inputs, outputs, parameters, buffers,
            new GeneratedNodeExecutor(owner, node.Id), loopIndices.ToArray(), modifiesInput, opaqueReason);
    }

    private void AddCapturedNode(
        string name, NodeKind kind, string operation, string modulePath, string location, int[] inputs, int[] outputs,
        List<string> parameters, List<string> buffers, NodeExecutor executor, int[] loopIndices, bool modifiesInput, string? opaqueReason)
    {
        var id = _nodes.Count;
        foreach (var parameter in parameters.Concat(buffers))
        {
            RegisterParameter(parameter, id);
        }
        _nodes.Add(new CapturedNode(
            id, name, kind, operation, modulePath, location, inputs, outputs, parameters, buffers, executor, loopIndices, modifiesInput, opaqueReason));
    }

    /// <summary>The module's path as in the model's <c>named_modules()</c>; a module the model does not register gets its field's name.</summary>
    private string PathOf(nn.Module module, string prefix, string fallback) =>
        _modulePaths.TryGetValue(module, out var path) ? path : Join(prefix, fallback);

    private void AddModuleTensors(nn.Module module, string modulePath, List<string> parameters, List<string> buffers)
    {
        foreach (var (parameterName, parameter) in module.named_parameters())
        {
            AddOnce(parameters, CanonicalName(modulePath, parameterName, parameter));
        }
        foreach (var (bufferName, buffer) in module.named_buffers())
        {
            AddOnce(buffers, CanonicalName(modulePath, bufferName, buffer));
        }
    }

    /// <summary>
    /// The children of a <c>Sequential</c> in call order with their names, or null when one of them is not a
    /// one-tensor module (then the <c>Sequential</c> stays one node).
    /// </summary>
    private static List<(string Name, nn.Module<Tensor, Tensor> Module)>? SequentialChildren(Sequential sequential)
    {
        var children = new List<(string, nn.Module<Tensor, Tensor>)>();
        foreach (var (childName, child) in sequential.named_children())
        {
            if (child is not nn.Module<Tensor, Tensor> call)
            {
                return null;
            }
            children.Add((childName, call));
        }
        return children;
    }

    /// <summary>
    /// A call of a <c>Sequential</c> becomes the chain of its children, as its forward() runs them: <c>[RaNNC]</c>
    /// children are inlined, nested <c>Sequential</c>s expand in turn, other children are one node each, so that a
    /// cut can fall between any two layers. Returns the value the chain ends with.
    /// </summary>
    private int ExpandSequential(List<(string Name, nn.Module<Tensor, Tensor> Module)> children, int input, string path, string location)
    {
        var current = input;
        foreach (var (childName, child) in children)
        {
            var childPath = PathOf(child, path, childName);
            if (child is ICapturedModule inner && inner.CaptureTemplate.IsCaptured)
            {
                current = InlineCall(inner, [current], 1, childPath, location)[0];
                continue;
            }
            if (child is Sequential nested && SequentialChildren(nested) is { } grandchildren)
            {
                current = ExpandSequential(grandchildren, current, childPath, location);
                continue;
            }
            var parameters = new List<string>();
            var buffers = new List<string>();
            AddModuleTensors(child, childPath, parameters, buffers);
            var name = UniqueName(childPath);
            var output = NewValue(name, SequentialValue, _nodes.Count);
            AddCapturedNode(
                name, NodeKind.Module, "forward", childPath, location, [current], [output], parameters, buffers,
                new ModuleCallExecutor(child), [], InPlace.ModuleMayModifyInput(child), OpaqueReason(child));
            current = output;
        }
        return current;
    }

    /// <summary>The template value of a tensor passed between the children of a <c>Sequential</c>.</summary>
    private static readonly TemplateValue SequentialValue = new(-1, "x", "TorchSharp.torch.Tensor", ValueKind.Tensor);

    /// <summary>Why a leaf module stays opaque, for modules that are not TorchSharp's own layers; null for those.</summary>
    private static string? OpaqueReason(nn.Module module)
    {
        var type = module.GetType();
        if (InPlace.IsTorchSharpType(type))
        {
            return module is Sequential sequential
                ? $"Sequential of {sequential.children().Count()} layers, cannot be looked through because a child is not a Module<Tensor, Tensor>"
                : null;
        }
        if (module is ICapturedModule captured)
        {
            return $"forward() of {type.Name} could not be captured: {string.Join("; ", captured.CaptureTemplate.Errors)}";
        }
        return $"{type.Name} is not marked [RaNNC] (add [RaNNC] and partial to its class to look inside it)";
    }

    /// <summary>Replaces a call of a <c>[RaNNC]</c> submodule by the nodes of its own template.</summary>
    private void Inline(ICapturedModule inner, TemplateNode call, int[] inputs, Scope callerScope, string modulePath)
    {
        var results = InlineCall(inner, inputs, call.Outputs.Length, modulePath, call.Target + "." + call.Operation + " at " + call.Location);
        for (var k = 0; k < call.Outputs.Length; k++)
        {
            callerScope.Bind(call.Outputs[k], results[k]);
        }
    }

    /// <summary>Unrolls <paramref name="inner"/>'s template on <paramref name="inputs"/> under <paramref name="modulePath"/>; returns its outputs.</summary>
    private int[] InlineCall(ICapturedModule inner, int[] inputs, int expectedOutputs, string modulePath, string callDescription)
    {
        var template = inner.CaptureTemplate;
        if (template.Inputs.Length != inputs.Length || template.Outputs.Length != expectedOutputs)
        {
            throw new CaptureException(
                $"The call {callDescription} passes {inputs.Length} value(s) and expects {expectedOutputs}, "
                + $"but forward() of {template.ModuleType} takes {template.Inputs.Length} and returns {template.Outputs.Length}.");
        }
        var scope = new Scope(null);
        for (var i = 0; i < inputs.Length; i++)
        {
            scope.Bind(template.Inputs[i], inputs[i]);
        }
        Unroll(inner, template, template.Body, scope, modulePath, []);
        return template.Outputs.Select(scope.Lookup).ToArray();
    }

    private void RegisterParameter(string name, int node)
    {
        if (_parameterIndex.ContainsKey(name) || !_tensorsByName.TryGetValue(name, out var tensor))
        {
            return;
        }
        _parameterIndex[name] = _parameters.Count;
        _parameters.Add(new CapturedParameter(name, tensor.IsBuffer, tensor.Tensor.dtype, tensor.Tensor.NumberOfElements * tensor.Tensor.ElementSize, node));
    }

    private static string OperationName(TemplateNode node)
    {
        var operation = node.Operation.StartsWith("op_", StringComparison.Ordinal) ? node.Operation[3..] : node.Operation;
        operation = operation switch
        {
            "this[]" => "index",
            _ => operation,
        };
        return operation.ToLowerInvariant();
    }

    private static void AddOnce(List<string> names, string name)
    {
        if (!names.Contains(name))
        {
            names.Add(name);
        }
    }

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;

    private string UniqueName(string name)
    {
        if (!_nameUses.TryGetValue(name, out var uses))
        {
            _nameUses[name] = 1;
            return name;
        }
        _nameUses[name] = uses + 1;
        return name + "_" + uses.ToString(CultureInfo.InvariantCulture);
    }
}
