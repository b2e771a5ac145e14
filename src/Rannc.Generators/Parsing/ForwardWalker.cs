using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Threading;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Operations;
using Rannc.Generators.Helpers;
using Rannc.Generators.Model;

namespace Rannc.Generators.Parsing;

/// <summary>
/// Turns the IOperation tree of forward() into a dataflow template: an abstract interpretation over the structured
/// tree in which every local maps to an <see cref="Operand"/>, every operation on graph values becomes a node, and
/// loops and configuration branches become template steps that the runtime resolves per instance.
/// </summary>
internal sealed partial class ForwardWalker
{
    private static readonly SymbolDisplayFormat FullyQualified = SymbolDisplayFormat.FullyQualifiedFormat;

    private readonly KnownSymbols _known;
    private readonly INamedTypeSymbol _type;
    private readonly Func<SyntaxTree, SemanticModel> _semanticModels;
    private readonly CancellationToken _cancellation;
    private readonly List<Finding> _findings;
    private readonly List<ValueInfo> _values = new();
    private readonly List<int> _inputs = new();
    private readonly List<int> _outputs = new();
    private readonly List<InPlaceUse> _inPlaceUses = new();
    private readonly List<IMethodSymbol> _inlining = new();
    private readonly HashSet<Location> _untranslatable = new();
    private readonly HashSet<int> _errorValues = new();
    private Body _body = new(null);
    private Scope _scope = new(null);
    private ReturnSink _return = new(0, 0, null);
    private int _nextNodeId;
    private int _nextLoopId;
    private int _nextBranchId;
    private int _nextListIdentity;
    private int _loopDepth;
    private int _currentLoopId = -1;
    private int _branchDepth;

    public ForwardWalker(
        KnownSymbols known, INamedTypeSymbol type, Func<SyntaxTree, SemanticModel> semanticModels,
        List<Finding> findings, CancellationToken cancellation)
    {
        _known = known;
        _type = type;
        _semanticModels = semanticModels;
        _findings = findings;
        _cancellation = cancellation;
    }

    private string TypeName => _type.Name;

    /// <summary>Walks forward() and returns its template.</summary>
    public TemplateModel Walk(IMethodSymbol forward, IMethodBodyOperation body)
    {
        foreach (var parameter in forward.Parameters)
        {
            var id = NewValue(parameter.Name, parameter.Type, fromLocal: true);
            _values[id].ShapeLike = !_known.IsTensor(parameter.Type);
            _inputs.Add(id);
            _scope.Bind(parameter, Operand.Value(id, parameter.Type));
        }
        _inlining.Add(forward);
        _return = new ReturnSink(0, 0, forward.ReturnType);
        WalkMethodBody(body, forward);
        if (!_return.Returned)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, body.Syntax.GetLocation(), TypeName,
                "a forward() without a final return statement", "end forward() with one 'return' of the result");
        }
        else if (_return.Value is { } result)
        {
            foreach (var leaf in Flatten(result))
            {
                _outputs.Add(Materialize(leaf, body));
            }
        }
        CheckInPlaceUses();
        return new TemplateModel(
            _values.Select(v => new ValueModel(v.Id, v.Name, v.TypeName, v.Kind)).ToEquatableArray(),
            _inputs.ToEquatableArray(),
            _outputs.ToEquatableArray(),
            _body.Steps.ToEquatableArray());
    }

    // ------------------------------------------------------------------ bookkeeping

    private sealed class ValueInfo
    {
        public ValueInfo(int id, string name, string typeName, string kind, bool fromLocal, int loopId, bool isParameterRead)
        {
            Id = id;
            Name = name;
            TypeName = typeName;
            Kind = kind;
            FromLocal = fromLocal;
            LoopId = loopId;
            IsParameterRead = isParameterRead;
        }

        public int Id { get; }

        public string Name { get; set; }

        public string TypeName { get; }

        public string Kind { get; }

        public bool FromLocal { get; set; }

        public int LoopId { get; }

        public bool IsParameterRead { get; }

        /// <summary>
        /// A number or object known from shapes, null tests and non-tensor inputs alone (never from tensor contents), so a
        /// condition on it can be resolved from the first batch and guarded on later ones.
        /// </summary>
        public bool ShapeLike { get; set; }
    }

    private sealed class Scope
    {
        private readonly Dictionary<ISymbol, Operand> _map = new(SymbolEqualityComparer.Default);

        public Scope(Scope? parent) => Parent = parent;

        public Scope? Parent { get; }

        public void Bind(ISymbol symbol, Operand value) => _map[symbol] = value;

        public Operand? Lookup(ISymbol symbol) =>
            _map.TryGetValue(symbol, out var value) ? value : Parent?.Lookup(symbol);

        public bool IsBoundHere(ISymbol symbol) => _map.ContainsKey(symbol);

        /// <summary>True when a symbol other than <paramref name="symbol"/> is bound to the list <paramref name="identity"/>.</summary>
        public bool SharesList(ISymbol symbol, int identity) =>
            _map.Any(entry => entry.Value.IsList && entry.Value.ListIdentity == identity && !SymbolEqualityComparer.Default.Equals(entry.Key, symbol))
            || (Parent?.SharesList(symbol, identity) ?? false);
    }

    /// <summary>The step list being filled, with the attribute reads already made in it (reused, not repeated).</summary>
    private sealed class Body
    {
        public Body(Body? parent) => Parent = parent;

        public Body? Parent { get; }

        public List<StepModel> Steps { get; } = new();

        public Dictionary<string, Operand> AttributeReads { get; } = new(StringComparer.Ordinal);

        public Operand? FindAttributeRead(string code) =>
            AttributeReads.TryGetValue(code, out var value) ? value : Parent?.FindAttributeRead(code);
    }

    private sealed class ReturnSink
    {
        public ReturnSink(int loopDepth, int branchDepth, ITypeSymbol? returnType)
        {
            LoopDepth = loopDepth;
            BranchDepth = branchDepth;
            ReturnType = returnType;
        }

        public ITypeSymbol? ReturnType { get; }

        /// <summary>Loop and branch depth of the method body that may return.</summary>
        public int LoopDepth { get; }

        public int BranchDepth { get; }

        public bool Returned { get; set; }

        public Operand? Value { get; set; }
    }

    private sealed class InPlaceUse
    {
        public InPlaceUse(int receiver, int loopId, Location location, string method)
        {
            Receiver = receiver;
            LoopId = loopId;
            Location = location;
            Method = method;
        }

        public int Receiver { get; }

        public int LoopId { get; }

        public Location Location { get; }

        public string Method { get; }
    }

    private void Report(DiagnosticDescriptor descriptor, Location location, params object[] arguments) =>
        _findings.Add(new Finding(descriptor, location, arguments));

    private int NewValue(string name, ITypeSymbol? type, bool fromLocal = false, bool isParameterRead = false)
    {
        var id = _values.Count;
        _values.Add(new ValueInfo(id, name, ValueTypeName(type), ValueKindOf(type), fromLocal, _currentLoopId, isParameterRead));
        return id;
    }

    /// <summary>Tensor subclasses (Parameter) travel as Tensor: a stage may receive a detached copy.</summary>
    private string ValueTypeName(ITypeSymbol? type)
    {
        if (type is null)
        {
            return "object";
        }
        if (_known.IsTensor(type) && _known.Tensor is not null)
        {
            return _known.Tensor.ToDisplayString(FullyQualified);
        }
        return type.WithNullableAnnotation(NullableAnnotation.None).ToDisplayString(FullyQualified);
    }

    private string ValueKindOf(ITypeSymbol? type)
    {
        if (_known.IsTensor(type))
        {
            return "Tensor";
        }
        switch (type?.SpecialType)
        {
            case SpecialType.System_Boolean:
            case SpecialType.System_Byte:
            case SpecialType.System_SByte:
            case SpecialType.System_Int16:
            case SpecialType.System_UInt16:
            case SpecialType.System_Int32:
            case SpecialType.System_UInt32:
            case SpecialType.System_Int64:
            case SpecialType.System_UInt64:
            case SpecialType.System_Single:
            case SpecialType.System_Double:
                return "Scalar";
            default:
                return "Other";
        }
    }

    private static string LocationText(Location location)
    {
        var span = location.GetLineSpan();
        var file = Path.GetFileName(span.Path);
        return string.Format(
            CultureInfo.InvariantCulture, "{0}({1},{2})", file, span.StartLinePosition.Line + 1, span.StartLinePosition.Character + 1);
    }

    // ------------------------------------------------------------------ nodes and values

    /// <summary>
    /// Adds a node computing <paramref name="code"/>. Its inputs are the values the code refers to; its outputs are
    /// the result, or one output per element when the result is a tuple.
    /// </summary>
    private Operand AddNode(
        string kind, string target, string operation, IOperation origin, ITypeSymbol? resultType, string code,
        string? targetCode = null, string? valueName = null, List<int>? explicitInputs = null, bool inPlace = false, bool shapeLike = false)
    {
        var inputs = explicitInputs ?? Operand.ValuesIn(code);
        var resultCode = explicitInputs is null
            ? Operand.Substitute(code, id => "frame.Input<" + _values[id].TypeName + ">(" + inputs.IndexOf(id).ToString(CultureInfo.InvariantCulture) + ")")
            : code;
        CheckTranslation(resultCode, isStatement: false, origin);
        if (targetCode is not null)
        {
            CheckTranslation(targetCode, isStatement: false, origin);
        }
        var outputs = new List<int>();
        var accessors = new List<string>();
        Operand result;
        if (resultType is null || resultType.SpecialType == SpecialType.System_Void)
        {
            result = Operand.Transparent;
        }
        else
        {
            result = CreateOutputs(resultType, string.Empty, valueName ?? operation, kind == "Attribute", outputs, accessors);
            var readsOnlyShapes = shapeLike || inputs.All(id => _values[id].ShapeLike
                || (kind == "TensorMethod" && ShapeAccessors.Contains(operation) && _values[id].Kind == "Tensor"));
            foreach (var output in outputs)
            {
                _values[output].ShapeLike = readsOnlyShapes && _values[output].Kind != "Tensor";
            }
        }
        var node = new NodeModel(
            _nextNodeId++, kind, target, operation, inputs.ToEquatableArray(), outputs.ToEquatableArray(),
            LocationText(origin.Syntax.GetLocation()), resultCode, accessors.ToEquatableArray(), targetCode, inPlace);
        _body.Steps.Add(node);
        return result;
    }

    private static readonly CSharpParseOptions GeneratedCodeOptions = CSharpParseOptions.Default.WithLanguageVersion(LanguageVersion.Latest);

    /// <summary>Tensor members whose result depends on the tensor's shape, type or placement, not on its contents.</summary>
    private static readonly HashSet<string> ShapeAccessors = new(StringComparer.Ordinal)
    {
        "shape", "size", "dim", "ndim", "Dimensions", "numel", "NumberOfElements", "dtype", "device", "device_type",
        "is_cuda", "requires_grad", "ElementSize", "is_contiguous", "is_sparse", "is_complex", "is_floating_point",
    };

    /// <summary>True when <paramref name="operand"/> reads graph values and every one of them is known from shapes.</summary>
    private bool IsShapeLike(Operand operand) =>
        operand.DependsOnValues && Operand.ValuesIn(operand.Code).All(id => _values[id].ShapeLike);

    /// <summary>
    /// The generator must never emit code that does not compile: a fragment that does not even parse means a construct
    /// was translated wrongly, so it becomes a finding at the construct (and the class gets the failed template).
    /// </summary>
    private void CheckTranslation(string code, bool isStatement, IOperation origin)
    {
        SyntaxNode parsed = isStatement
            ? SyntaxFactory.ParseStatement(code, options: GeneratedCodeOptions)
            : SyntaxFactory.ParseExpression(code, options: GeneratedCodeOptions);
        var wellFormed = code.Length > 0 && !parsed.ContainsDiagnostics && parsed.FullSpan.Length == code.Length && code.IndexOf('\u0001') < 0;
        // one finding per construct, however many nodes its fragment ends up in
        if (!wellFormed && _untranslatable.Add(origin.Syntax.GetLocation()))
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, origin.Syntax.GetLocation(), TypeName,
                "'" + origin.Syntax + "'", "the generator cannot translate it into code that compiles; rewrite it with locals, or report it as a Rannc bug");
        }
    }

    private Operand CreateOutputs(
        ITypeSymbol type, string accessor, string name, bool isParameterRead, List<int> outputs, List<string> accessors)
    {
        if (type is INamedTypeSymbol { IsTupleType: true } tuple)
        {
            var items = ImmutableArray.CreateBuilder<Operand>();
            var index = 0;
            foreach (var element in tuple.TupleElements)
            {
                index++;
                var itemAccessor = accessor + ".Item" + index.ToString(CultureInfo.InvariantCulture);
                items.Add(CreateOutputs(element.Type, itemAccessor, name + "_" + index.ToString(CultureInfo.InvariantCulture), false, outputs, accessors));
            }
            return Operand.Tuple(items.ToImmutable(), type);
        }
        var id = NewValue(name, type, isParameterRead: isParameterRead);
        outputs.Add(id);
        accessors.Add(accessor);
        return Operand.Value(id, type);
    }

    /// <summary>Makes <paramref name="operand"/> one graph value, adding a Constant or Expression node if needed.</summary>
    private int Materialize(Operand operand, IOperation origin)
    {
        if (operand.SingleValue is { } id)
        {
            return id;
        }
        if (operand.IsTuple && operand.DependsOnValues)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, origin.Syntax.GetLocation(), TypeName,
                "a tuple where a single value is needed", "deconstruct the tuple into separate locals");
            return NewValue("error", operand.Type);
        }
        var kind = operand.DependsOnValues ? "Expression" : "Constant";
        var result = AddNode(kind, string.Empty, kind == "Constant" ? "constant" : "expression", origin, operand.Type, operand.Code);
        return result.SingleValue ?? NewValue("error", operand.Type);
    }

    private IEnumerable<Operand> Flatten(Operand operand)
    {
        if (!operand.IsTuple)
        {
            yield return operand;
            yield break;
        }
        foreach (var item in operand.Items)
        {
            foreach (var leaf in Flatten(item))
            {
                yield return leaf;
            }
        }
    }

    private void BindLocal(ISymbol symbol, Operand value)
    {
        if (value.SingleValue is { } id && !_values[id].FromLocal)
        {
            _values[id].Name = symbol.Name;
            _values[id].FromLocal = true;
        }
        _scope.Bind(symbol, value);
    }

    /// <summary>RANNC0004: an in-place operation is safe only on a value nothing else reads.</summary>
    private void CheckInPlaceUses()
    {
        if (_inPlaceUses.Count == 0)
        {
            return;
        }
        var uses = new Dictionary<int, int>();
        void Count(IEnumerable<int> ids)
        {
            foreach (var id in ids)
            {
                uses[id] = uses.TryGetValue(id, out var n) ? n + 1 : 1;
            }
        }
        void CountSteps(IEnumerable<StepModel> steps)
        {
            foreach (var step in steps)
            {
                switch (step)
                {
                    case NodeModel node:
                        Count(node.Inputs);
                        break;
                    case LoopModel loop:
                        Count(loop.CarriedIn);
                        CountSteps(loop.Body);
                        Count(loop.BodyOut);
                        break;
                    case BranchModel branch:
                        foreach (var arm in branch.Arms)
                        {
                            CountSteps(arm.Body);
                            Count(arm.Outputs);
                        }
                        break;
                }
            }
        }
        CountSteps(_body.Steps);
        Count(_outputs);
        foreach (var use in _inPlaceUses)
        {
            var value = _values[use.Receiver];
            var shared = (uses.TryGetValue(use.Receiver, out var n) ? n : 0) > 1
                || _inputs.Contains(use.Receiver)
                || value.IsParameterRead
                || value.LoopId != use.LoopId;
            if (shared)
            {
                Report(DiagnosticDescriptors.InPlaceOnSharedValue, use.Location, use.Method, TypeName,
                    use.Method.Substring(0, use.Method.Length - 1));
            }
        }
    }

    // ------------------------------------------------------------------ statements

    private void WalkMethodBody(IMethodBodyOperation body, IMethodSymbol method)
    {
        IOperation? block = (IOperation?)body.BlockBody ?? body.ExpressionBody;
        if (block is null)
        {
            Report(DiagnosticDescriptors.UnsupportedSignature, body.Syntax.GetLocation(), TypeName,
                "'" + method.Name + "' has no body");
            return;
        }
        Statement(block);
    }

    private void Statement(IOperation operation)
    {
        _cancellation.ThrowIfCancellationRequested();
        if (_return.Returned)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, operation.Syntax.GetLocation(), TypeName,
                "a statement after 'return'", "remove it or move it before the return");
            return;
        }
        switch (operation)
        {
            case IBlockOperation block:
                Statements(block.Operations);
                break;
            case IVariableDeclarationGroupOperation group:
                Declarations(group);
                break;
            case IUsingDeclarationOperation usingDeclaration:
                // `using var y = ...`: lifetimes of graph values are managed by the runtime.
                Declarations(usingDeclaration.DeclarationGroup);
                break;
            case IUsingOperation usingStatement:
                if (usingStatement.Resources is IVariableDeclarationGroupOperation resources)
                {
                    Declarations(resources);
                }
                else if (!_known.IsDisposeScope(usingStatement.Resources.Type))
                {
                    Report(DiagnosticDescriptors.UnsupportedConstruct, usingStatement.Resources.Syntax.GetLocation(), TypeName,
                        "'using (" + usingStatement.Resources.Syntax + ")'",
                        "only dispose scopes may wrap captured code; autograd modes (no_grad) must be set by the caller");
                }
                Statement(usingStatement.Body);
                break;
            case IExpressionStatementOperation expression:
                ExpressionStatement(expression.Operation);
                break;
            case IReturnOperation returnOperation:
                Return(returnOperation);
                break;
            case IConditionalOperation conditional:
                IfStatement(conditional);
                break;
            case ISwitchOperation switchOperation:
                SwitchStatement(switchOperation);
                break;
            case IForEachLoopOperation forEach:
                ForEachLoop(forEach);
                break;
            case IForLoopOperation forLoop:
                ForLoop(forLoop);
                break;
            case IWhileLoopOperation whileLoop:
                WhileLoop(whileLoop);
                break;
            case IEmptyOperation:
                break;
            default:
                Report(DiagnosticDescriptors.UnsupportedConstruct, operation.Syntax.GetLocation(), TypeName,
                    "a '" + operation.Kind + "' statement", "rewrite it with locals, configuration 'if'/'switch', 'for' or 'foreach'");
                break;
        }
    }

    /// <summary>
    /// A statement list. <c>if (configuration) { ...; return a; } ...; return b;</c> becomes a branch whose arms are the
    /// 'then' part and the rest of the list, each ending in its own return.
    /// </summary>
    private void Statements(IReadOnlyList<IOperation> statements)
    {
        for (var i = 0; i < statements.Count; i++)
        {
            if (!_return.Returned && statements[i] is IConditionalOperation conditional && EndsWithReturn(conditional.WhenTrue)
                && (conditional.WhenFalse is null || EndsWithReturn(conditional.WhenFalse)))
            {
                var rest = conditional.WhenFalse is null ? statements.Skip(i + 1).ToList() : new List<IOperation> { conditional.WhenFalse };
                ReturningBranch(conditional, rest);
                return;
            }
            Statement(statements[i]);
        }
    }

    private static bool EndsWithReturn(IOperation operation) => operation switch
    {
        IReturnOperation => true,
        IBlockOperation block => block.Operations.Length > 0 && EndsWithReturn(block.Operations[block.Operations.Length - 1]),
        _ => false,
    };

    private void Declarations(IVariableDeclarationGroupOperation group)
    {
        foreach (var declaration in group.Declarations)
        {
            foreach (var declarator in declaration.Declarators)
            {
                var initializer = declarator.Initializer?.Value ?? declaration.Initializer?.Value;
                if (initializer is null)
                {
                    // assigned later (C# checks definite assignment); known from here on so branches can assign it
                    _scope.Bind(declarator.Symbol, new Operand("default(" + declarator.Symbol.Type.ToDisplayString(FullyQualified) + ")", declarator.Symbol.Type));
                    continue;
                }
                BindLocal(declarator.Symbol, Eval(initializer));
            }
        }
    }

    private void Return(IReturnOperation returnOperation)
    {
        if (_loopDepth > _return.LoopDepth || _branchDepth > _return.BranchDepth)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, returnOperation.Syntax.GetLocation(), TypeName,
                "'return' inside a loop or a branch", "assign the result to a local and return it once at the end");
            return;
        }
        if (returnOperation.ReturnedValue is { } value)
        {
            _return.Value = Eval(value);
        }
        _return.Returned = true;
    }

    private void ExpressionStatement(IOperation expression)
    {
        switch (expression)
        {
            case ISimpleAssignmentOperation assignment:
                Assign(assignment.Target, Eval(assignment.Value), assignment);
                break;
            case ICompoundAssignmentOperation compound:
                Assign(compound.Target, CompoundValue(compound), compound);
                break;
            case IDeconstructionAssignmentOperation deconstruction:
                Deconstruct(deconstruction);
                break;
            case IInvocationOperation invocation:
                InvocationStatement(invocation);
                break;
            case IThrowOperation:
                Report(DiagnosticDescriptors.UnsupportedConstruct, expression.Syntax.GetLocation(), TypeName,
                    "'throw'", "validate arguments in the constructor, or before calling forward()");
                break;
            default:
                Report(DiagnosticDescriptors.UnsupportedConstruct, expression.Syntax.GetLocation(), TypeName,
                    "the statement '" + expression.Syntax + "'", "assign results to locals; only in-place tensor methods and helper methods may be called for their effect");
                break;
        }
    }

    private void InvocationStatement(IInvocationOperation invocation)
    {
        var method = invocation.TargetMethod;
        if (_known.IsTensor(method.ContainingType) && method.Name == "Dispose")
        {
            return; // graph values are released by the runtime
        }
        if (IsListAdd(invocation))
        {
            ListAdd(invocation);
            return;
        }
        var isHelper = IsInlinableHelper(invocation);
        var isInPlace = !method.IsStatic && _known.IsTensor(method.ContainingType) && IsInPlaceName(method.Name);
        var result = Eval(invocation);
        if (isInPlace && invocation.Instance is { } receiver && LocalSymbolOf(receiver) is { } local)
        {
            // x.relu_(); later reads of x see the node's output
            BindLocal(local, result);
            return;
        }
        if (!isHelper && !isInPlace && !result.DependsOnValues && !_known.IsModule(method.ContainingType))
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), method.ToDisplayString(), TypeName,
                "its effect would not be part of the graph; only in-place tensor methods and helper methods of this class may be called without using the result");
        }
    }

    private static bool IsListAdd(IInvocationOperation invocation) =>
        invocation.TargetMethod is { Name: "Add", IsStatic: false, Parameters.Length: 1 } method
        && method.ContainingType.OriginalDefinition.ToDisplayString() == "System.Collections.Generic.List<T>";

    /// <summary>
    /// <c>parts.Add(x)</c> on a list built in the same block: the local now stands for the list with one more element.
    /// Elsewhere (a list declared outside the loop or branch, a parameter, a list another local also refers to) the
    /// new element would be lost on the other paths, so it is refused.
    /// </summary>
    private void ListAdd(IInvocationOperation invocation)
    {
        var symbol = invocation.Instance is null ? null : LocalSymbolOf(invocation.Instance);
        var list = symbol is ILocalSymbol ? _scope.Lookup(symbol) : null;
        if (symbol is null || list is null || !list.IsList || !_scope.IsBoundHere(symbol) || _scope.SharesList(symbol, list.ListIdentity))
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), invocation.TargetMethod.ToDisplayString(), TypeName,
                "a list can be filled with Add only in the block that creates it (not in a loop, a branch or a helper it is passed to) and through one local; create it as 'new List<Tensor> { a, b }', or collect the tensors with torch.stack");
            return;
        }
        _scope.Bind(symbol, list.WithListElement(Eval(invocation.Arguments[0].Value)));
    }

    private static bool IsInPlaceName(string name) => name.Length > 1 && name[name.Length - 1] == '_' && name != "requires_grad_";

    private static ISymbol? LocalSymbolOf(IOperation operation) => Strip(operation) switch
    {
        ILocalReferenceOperation local => local.Local,
        IParameterReferenceOperation parameter => parameter.Parameter,
        _ => null,
    };

    private void Assign(IOperation target, Operand value, IOperation origin)
    {
        switch (target)
        {
            case ILocalReferenceOperation local:
                BindLocal(local.Local, value);
                break;
            case IParameterReferenceOperation parameter:
                BindLocal(parameter.Parameter, value);
                break;
            case IDiscardOperation:
                break;
            case IFieldReferenceOperation field:
                Report(DiagnosticDescriptors.StateMutation, origin.Syntax.GetLocation(), TypeName, field.Field.Name);
                break;
            case IPropertyReferenceOperation property:
                Report(DiagnosticDescriptors.StateMutation, origin.Syntax.GetLocation(), TypeName, property.Property.Name);
                break;
            case IArrayElementReferenceOperation element:
                Report(DiagnosticDescriptors.StateMutation, origin.Syntax.GetLocation(), TypeName, element.ArrayReference.Syntax.ToString() + "[...]");
                break;
            default:
                Report(DiagnosticDescriptors.UnsupportedConstruct, origin.Syntax.GetLocation(), TypeName,
                    "an assignment to '" + target.Syntax + "'", "assign to a local instead");
                break;
        }
    }

    private void Deconstruct(IDeconstructionAssignmentOperation deconstruction)
    {
        var targets = new List<IOperation>();
        FlattenTargets(deconstruction.Target, targets);
        var values = Flatten(Eval(deconstruction.Value)).ToList();
        if (values.Count != targets.Count)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, deconstruction.Syntax.GetLocation(), TypeName,
                "a deconstruction whose shape differs from the value's", "deconstruct into exactly one local per tuple element");
            return;
        }
        // evaluate everything before binding, so that (a, b) = (b, a) swaps
        for (var i = 0; i < targets.Count; i++)
        {
            Assign(targets[i], values[i], deconstruction);
        }
    }

    private static void FlattenTargets(IOperation target, List<IOperation> targets)
    {
        if (target is IDeclarationExpressionOperation declaration)
        {
            target = declaration.Expression;
        }
        if (target is ITupleOperation tuple)
        {
            foreach (var element in tuple.Elements)
            {
                FlattenTargets(element, targets);
            }
        }
        else
        {
            targets.Add(target);
        }
    }

    private static IOperation Strip(IOperation operation)
    {
        while (operation is IConversionOperation { IsImplicit: true } conversion)
        {
            operation = conversion.Operand;
        }
        return operation;
    }
}
