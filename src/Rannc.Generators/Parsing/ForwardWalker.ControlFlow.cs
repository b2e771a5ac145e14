using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Operations;
using Rannc.Generators.Helpers;
using Rannc.Generators.Model;

namespace Rannc.Generators.Parsing;

// Loops over module containers and branches on configuration. Both become template steps: the runtime asks the
// instance for the trip count or the arm, so one template serves every configuration.
internal sealed partial class ForwardWalker
{
    private static string LoopIndex(int depth) => "loopIndices[" + depth.ToString(CultureInfo.InvariantCulture) + "]";

    // ------------------------------------------------------------------ branches

    private void IfStatement(IConditionalOperation conditional)
    {
        var condition = Eval(conditional.Condition);
        if (IsDataDependent(condition, conditional.Condition, "'if (" + conditional.Condition.Syntax + ")'"))
        {
            return;
        }
        var arms = new List<IOperation?> { conditional.WhenTrue, conditional.WhenFalse };
        Branch(
            conditional,
            "if (" + conditional.Condition.Syntax + ")",
            condition,
            arms.Select(arm => (Func<Operand?>)(() =>
            {
                if (arm is not null)
                {
                    Statement(arm);
                }
                return null;
            })).ToList(),
            arms.Where(arm => arm is not null).Cast<IOperation>().ToList(),
            resultType: null);
    }

    /// <summary>An 'if' on configuration whose arms both end in 'return': the branch's result is what is returned.</summary>
    private void ReturningBranch(IConditionalOperation conditional, List<IOperation> otherwise)
    {
        var condition = Eval(conditional.Condition);
        var resultType = _return.ReturnType;
        if (IsDataDependent(condition, conditional.Condition, "'if (" + conditional.Condition.Syntax + ")'"))
        {
            // already reported: do not report the missing return as well
            _return.Value = ErrorValue(resultType);
            _return.Returned = true;
            return;
        }
        if (resultType is INamedTypeSymbol { IsTupleType: true })
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, conditional.Syntax.GetLocation(), TypeName,
                "'return' of a tuple inside a branch", "assign the tuple elements to locals and return them once at the end");
            // already reported: do not report the missing return as well
            _return.Value = ErrorValue(resultType);
            _return.Returned = true;
            return;
        }
        Operand? WalkArm(IReadOnlyList<IOperation> statements)
        {
            var outer = _return;
            _return = new ReturnSink(_loopDepth, _branchDepth, outer.ReturnType);
            Statements(statements);
            var value = _return.Value;
            _return = outer;
            return value ?? ErrorValue(resultType);
        }
        var result = Branch(
            conditional,
            "if (" + conditional.Condition.Syntax + ") return",
            condition,
            new List<Func<Operand?>> { () => WalkArm(new[] { conditional.WhenTrue }), () => WalkArm(otherwise) },
            new List<IOperation> { conditional.WhenTrue }.Concat(otherwise).ToList(),
            resultType);
        _return.Value = result;
        _return.Returned = true;
    }

    /// <summary>A conditional expression on configuration: a branch whose arms each produce the result.</summary>
    private Operand ConditionalExpression(IConditionalOperation conditional)
    {
        var condition = Eval(conditional.Condition);
        if (IsDataDependent(condition, conditional.Condition, "'" + conditional.Syntax + "'"))
        {
            return Operand.Value(NewValue("error", conditional.Type), conditional.Type);
        }
        var whenTrue = conditional.WhenTrue;
        var whenFalse = conditional.WhenFalse!;
        if (!ContainsGraphWork(whenTrue) && !ContainsGraphWork(whenFalse))
        {
            var trueValue = Eval(whenTrue);
            var falseValue = Eval(whenFalse);
            if (!condition.DependsOnValues && !trueValue.DependsOnValues && !falseValue.DependsOnValues)
            {
                // a choice between submodules is still a submodule: its call must be a Module node that owns the parameters
                return new Operand("((" + condition.Code + ") ? (" + trueValue.Code + ") : (" + falseValue.Code + "))", conditional.Type,
                    trueValue.IsModule && falseValue.IsModule);
            }
            // on shapes, a choice between existing values needs no guarded branch: one node chooses for every batch
            if (condition.DependsOnValues && !trueValue.IsTuple && !falseValue.IsTuple)
            {
                return AddNode("Expression", string.Empty, "?:", conditional, conditional.Type,
                    "((" + condition.Code + ") ? (" + trueValue.Code + ") : (" + falseValue.Code + "))", valueName: "choice");
            }
        }
        return Branch(
            conditional,
            conditional.Condition.Syntax + " ? ... : ...",
            condition,
            new List<Func<Operand?>> { () => Eval(whenTrue), () => Eval(whenFalse) },
            new List<IOperation> { whenTrue, whenFalse },
            conditional.Type)!;
    }

    /// <summary>
    /// RANNC0001 for a condition on tensor contents. Conditions on configuration are resolved per instance, conditions on
    /// shapes (and null tests, and non-tensor inputs) from the first batch; both are fine.
    /// </summary>
    private bool IsDataDependent(Operand condition, IOperation conditionOperation, string description)
    {
        if (!condition.DependsOnValues || IsShapeLike(condition))
        {
            return false;
        }
        Report(DiagnosticDescriptors.DataDependentControlFlow, conditionOperation.Syntax.GetLocation(), TypeName, description);
        return true;
    }

    /// <summary>True when evaluating <paramref name="operation"/> may add nodes (so it cannot be folded into a ?: fragment).</summary>
    private bool ContainsGraphWork(IOperation operation)
    {
        foreach (var descendant in operation.DescendantsAndSelf())
        {
            if (descendant is IInvocationOperation or IBinaryOperation or IUnaryOperation or ICompoundAssignmentOperation)
            {
                return true;
            }
            if (descendant is IFieldReferenceOperation field && _known.IsTensor(field.Type))
            {
                return true;
            }
            if (descendant is IPropertyReferenceOperation property && _known.IsTensor(property.Type))
            {
                return true;
            }
        }
        return false;
    }

    private void SwitchStatement(ISwitchOperation switchOperation)
    {
        var selector = Eval(switchOperation.Value);
        if (IsDataDependent(selector, switchOperation.Value, "'switch (" + switchOperation.Value.Syntax + ")'"))
        {
            return;
        }
        var select = new StringBuilder();
        select.Append("switch (").Append(selector.Code).Append(") { ");
        // on shapes the arm index is computed by a node: the sections' tests in order, the default last
        var shapeArm = new StringBuilder();
        var defaultArm = -1;
        var hasDefault = false;
        var arms = new List<Func<Operand?>>();
        var armOperations = new List<IOperation>();
        for (var i = 0; i < switchOperation.Cases.Length; i++)
        {
            var section = switchOperation.Cases[i];
            foreach (var clause in section.Clauses)
            {
                switch (clause)
                {
                    case ISingleValueCaseClauseOperation single:
                        var label = Eval(single.Value).Code;
                        select.Append("case ").Append(label).Append(": ");
                        shapeArm.Append("((").Append(selector.Code).Append(") == (").Append(label).Append(")) ? ")
                            .Append(i.ToString(CultureInfo.InvariantCulture)).Append(" : ");
                        break;
                    case IDefaultCaseClauseOperation:
                        select.Append("default: ");
                        hasDefault = true;
                        defaultArm = i;
                        break;
                    default:
                        Report(DiagnosticDescriptors.UnsupportedConstruct, clause.Syntax.GetLocation(), TypeName,
                            "a pattern 'case'", "use constant case labels");
                        return;
                }
            }
            select.Append("return ").Append(i.ToString(CultureInfo.InvariantCulture)).Append("; ");
            var body = section.Body;
            arms.Add(() =>
            {
                for (var k = 0; k < body.Length; k++)
                {
                    // the 'break' that ends a switch section is not control flow of the graph
                    if (k == body.Length - 1 && body[k] is IBranchOperation { BranchKind: BranchKind.Break })
                    {
                        break;
                    }
                    Statement(body[k]);
                }
                return null;
            });
            armOperations.AddRange(body);
        }
        if (!hasDefault)
        {
            // no case matched: an empty arm that leaves every local as it was
            select.Append("default: return ").Append(arms.Count.ToString(CultureInfo.InvariantCulture)).Append("; ");
            defaultArm = arms.Count;
            arms.Add(() => null);
        }
        select.Append('}');
        shapeArm.Append(defaultArm.ToString(CultureInfo.InvariantCulture));
        Branch(switchOperation, "switch (" + switchOperation.Value.Syntax + ")",
            selector.DependsOnValues ? "(" + shapeArm + ")" : null, select.ToString(), arms, armOperations, resultType: null);
    }

    private Operand? Branch(
        IOperation origin, string description, Operand condition, List<Func<Operand?>> arms, List<IOperation> armOperations,
        ITypeSymbol? resultType) =>
        Branch(origin, description, condition.DependsOnValues ? "((" + condition.Code + ") ? 0 : 1)" : null,
            "return (" + condition.Code + ") ? 0 : 1;", arms, armOperations, resultType);

    /// <summary>
    /// Adds a branch step. Locals from outside that any arm assigns become the branch's results; when
    /// <paramref name="resultType"/> is set, each arm's returned operand is the first result. With a
    /// <paramref name="shapeArmCode"/> (an int expression over shape values) the arm is chosen from the first batch: a
    /// selector node computes the arm index, and the graph builder evaluates it and guards later batches against a
    /// different choice.
    /// </summary>
    private Operand? Branch(
        IOperation origin, string description, string? shapeArmCode, string selectCode, List<Func<Operand?>> arms,
        List<IOperation> armOperations, ITypeSymbol? resultType)
    {
        var selector = -1;
        if (shapeArmCode is not null)
        {
            var armIndex = AddNode("Expression", string.Empty, "select arm", origin, _known.Compilation.GetSpecialType(SpecialType.System_Int32),
                shapeArmCode, valueName: "arm");
            selector = armIndex.SingleValue ?? -1;
            selectCode = "throw new global::System.InvalidOperationException(\"the arm of this branch depends on shapes: the graph builder evaluates value %" + selector.ToString(CultureInfo.InvariantCulture) + "\");";
        }
        CheckTranslation(selectCode, isStatement: true, origin);
        var assigned = AssignedOuterSymbols(armOperations);
        var outerBody = _body;
        var outerScope = _scope;
        var armModels = new List<ArmModel>();
        _branchDepth++;
        foreach (var arm in arms)
        {
            _body = new Body(outerBody);
            _scope = new Scope(outerScope);
            var outputs = new List<int>();
            var result = arm();
            if (resultType is not null)
            {
                outputs.Add(Materialize(result!, origin));
            }
            foreach (var symbol in assigned)
            {
                outputs.Add(Materialize(_scope.Lookup(symbol)!, origin));
            }
            armModels.Add(new ArmModel(_body.Steps.ToEquatableArray(), outputs.ToEquatableArray()));
        }
        _branchDepth--;
        _body = outerBody;
        _scope = outerScope;
        var results = new List<int>();
        Operand? branchResult = null;
        if (resultType is not null)
        {
            var id = NewValue("branch", resultType);
            results.Add(id);
            branchResult = Operand.Value(id, resultType);
        }
        foreach (var symbol in assigned)
        {
            var type = TypeOfSymbol(symbol);
            var id = NewValue(symbol.Name, type, fromLocal: true);
            results.Add(id);
            _scope.Bind(symbol, Operand.Value(id, type));
        }
        for (var k = 0; k < results.Count; k++)
        {
            // a result is known from shapes when every arm leaves a value known from shapes in it
            _values[results[k]].ShapeLike = _values[results[k]].Kind != "Tensor" && armModels.All(arm => _values[arm.Outputs[k]].ShapeLike);
        }
        _body.Steps.Add(new BranchModel(
            _nextBranchId++, description, LocationText(origin.Syntax.GetLocation()), selectCode,
            armModels.ToEquatableArray(), results.ToEquatableArray(), selector));
        return branchResult;
    }

    // ------------------------------------------------------------------ loops

    private void WhileLoop(IWhileLoopOperation whileLoop)
    {
        if (whileLoop.Condition is { } condition && Eval(condition).DependsOnValues)
        {
            Report(DiagnosticDescriptors.DataDependentControlFlow, condition.Syntax.GetLocation(), TypeName,
                "'while (" + condition.Syntax + ")'");
            return;
        }
        Report(DiagnosticDescriptors.UnsupportedConstruct, whileLoop.Syntax.GetLocation(), TypeName,
            "a 'while' or 'do' loop", "use 'for (int i = 0; i < count; i++)' with a count from a field, or 'foreach' over a module container");
    }

    private void ForEachLoop(IForEachLoopOperation forEach)
    {
        var collectionOperation = Strip(forEach.Collection);
        var collection = Eval(collectionOperation);
        if (collection.DependsOnValues)
        {
            Report(DiagnosticDescriptors.DataDependentControlFlow, forEach.Collection.Syntax.GetLocation(), TypeName,
                "'foreach' over '" + forEach.Collection.Syntax + "'");
            return;
        }
        if (forEach.LoopControlVariable is not IVariableDeclaratorOperation variable)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, forEach.Syntax.GetLocation(), TypeName,
                "'foreach' with a deconstructed variable", "declare one loop variable");
            return;
        }
        var collectionType = collectionOperation.Type;
        string countCode;
        Func<string, string> element;
        if (collectionType is IArrayTypeSymbol)
        {
            countCode = collection.Code + ".Length";
            element = index => collection.Code + "[" + index + "]";
        }
        else if (HasCountAndIndexer(collectionType))
        {
            countCode = collection.Code + ".Count";
            element = index => collection.Code + "[" + index + "]";
        }
        else
        {
            countCode = "global::System.Linq.Enumerable.Count(" + collection.Code + ")";
            element = index => "global::System.Linq.Enumerable.ElementAt(" + collection.Code + ", " + index + ")";
        }
        var variableType = variable.Symbol.Type;
        Loop(forEach, forEach.Body, countCode, "foreach (" + variable.Symbol.Name + " in " + forEach.Collection.Syntax + ")", depth =>
            _scope.Bind(variable.Symbol, new Operand(
                "((" + variableType.ToDisplayString(FullyQualified) + ")" + element(LoopIndex(depth)) + ")",
                variableType,
                isModule: _known.IsModule(variableType))));
    }

    private static bool HasCountAndIndexer(ITypeSymbol? type)
    {
        var hasCount = false;
        var hasIndexer = false;
        for (var current = type; current is not null; current = current.BaseType)
        {
            foreach (var member in current.GetMembers())
            {
                if (member is not IPropertySymbol { DeclaredAccessibility: Accessibility.Public, IsStatic: false } property)
                {
                    continue;
                }
                if (property.Name == "Count" && property.Type.SpecialType == SpecialType.System_Int32)
                {
                    hasCount = true;
                }
                if (property.IsIndexer && property.Parameters.Length == 1 && property.Parameters[0].Type.SpecialType == SpecialType.System_Int32)
                {
                    hasIndexer = true;
                }
            }
        }
        return hasCount && hasIndexer;
    }

    /// <summary>Captures <c>for (int i = A; i &lt; B; i++)</c> with A and B independent of tensors.</summary>
    private void ForLoop(IForLoopOperation forLoop)
    {
        ILocalSymbol? variable = null;
        Operand? start = null;
        Operand? bound = null;
        if (forLoop.Before.Length == 1
            && forLoop.Before[0] is IVariableDeclarationGroupOperation group
            && group.Declarations.Length == 1
            && group.Declarations[0].Declarators.Length == 1
            && group.Declarations[0].Declarators[0] is { Initializer: { } initializer } declarator)
        {
            variable = declarator.Symbol;
            start = Eval(initializer.Value);
        }
        if (variable is not null
            && forLoop.Condition is IBinaryOperation { OperatorKind: BinaryOperatorKind.LessThan } comparison
            && LocalSymbolOf(comparison.LeftOperand) is ILocalSymbol compared
            && SymbolEqualityComparer.Default.Equals(compared, variable))
        {
            bound = Eval(comparison.RightOperand);
        }
        var onShapes = (start?.DependsOnValues ?? false) || (bound?.DependsOnValues ?? false);
        if (onShapes && !((start is null || !start.DependsOnValues || IsShapeLike(start)) && (bound is null || !bound.DependsOnValues || IsShapeLike(bound))))
        {
            Report(DiagnosticDescriptors.DataDependentControlFlow, (forLoop.Condition ?? forLoop).Syntax.GetLocation(), TypeName,
                "'for' bounds '" + forLoop.Condition?.Syntax + "'");
            return;
        }
        var steps = forLoop.AtLoopBottom.Length == 1
            && forLoop.AtLoopBottom[0] is IExpressionStatementOperation { Operation: IIncrementOrDecrementOperation { Kind: OperationKind.Increment } increment }
            && LocalSymbolOf(increment.Target) is ILocalSymbol incremented
            && SymbolEqualityComparer.Default.Equals(incremented, variable);
        var assignedInBody = AssignedOuterSymbols(new[] { forLoop.Body });
        // C# evaluates the bound before every iteration: a bound the body changes cannot be one trip count
        var boundChanges = forLoop.Condition is IBinaryOperation condition && condition.RightOperand.DescendantsAndSelf()
            .Select(LocalSymbolOf).Any(symbol => symbol is not null && assignedInBody.Contains(symbol, SymbolEqualityComparer.Default));
        if (variable is null || start is null || bound is null || !steps || boundChanges || assignedInBody.Contains(variable, SymbolEqualityComparer.Default))
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, forLoop.Syntax.GetLocation(), TypeName,
                "a 'for' loop that is not 'for (int i = A; i < B; i++)'", "rewrite it in that form, with A and B from fields, constants or shapes, and neither i nor what B reads assigned in the body");
            return;
        }
        var startCode = start.Code;
        var countCode = "global::System.Math.Max(0, (" + bound.Code + ") - (" + startCode + "))";
        var countValue = -1;
        if (onShapes)
        {
            // bounds from shapes (or non-tensor inputs): a node computes the trip count, which the graph builder reads
            // from the first batch and guards like the arm of a branch on shapes
            countValue = AddNode("Expression", string.Empty, "trip count", forLoop.Condition!, _known.Compilation.GetSpecialType(SpecialType.System_Int32),
                "(int)global::System.Math.Max(0L, (long)(" + bound.Code + ") - (long)(" + startCode + "))", valueName: "count").SingleValue ?? -1;
            countCode = "0"; // not used: the emitter makes GetLoopCount refuse this loop
        }
        Loop(forLoop, forLoop.Body, countCode,
            "for (" + forLoop.Condition!.Syntax + ")", depth =>
            _scope.Bind(variable, new Operand("((" + startCode + ") + " + LoopIndex(depth) + ")", variable.Type)), countValue);
    }

    /// <summary>
    /// Adds a loop step: locals from outside that the body assigns are carried from one iteration to the next.
    /// </summary>
    private void Loop(IOperation origin, IOperation body, string countCode, string description, Action<int> bindLoopVariable, int countValue = -1)
    {
        CheckTranslation(countCode, isStatement: false, origin);
        var carried = AssignedOuterSymbols(new[] { body });
        var carriedIn = carried.Select(symbol => Materialize(_scope.Lookup(symbol)!, origin)).ToList();
        var loopId = _nextLoopId++;
        var outerBody = _body;
        var outerScope = _scope;
        var outerLoopId = _currentLoopId;
        _body = new Body(outerBody);
        _scope = new Scope(outerScope);
        _currentLoopId = loopId;
        var bodyIn = new List<int>();
        foreach (var symbol in carried)
        {
            var type = TypeOfSymbol(symbol);
            var phi = NewValue(symbol.Name, type, fromLocal: true);
            bodyIn.Add(phi);
            _scope.Bind(symbol, Operand.Value(phi, type));
        }
        bindLoopVariable(_loopDepth);
        _loopDepth++;
        Statement(body);
        var bodyOut = carried.Select(symbol => Materialize(_scope.Lookup(symbol)!, origin)).ToList();
        _loopDepth--;
        var bodySteps = _body.Steps;
        _body = outerBody;
        _scope = outerScope;
        _currentLoopId = outerLoopId;
        var results = new List<int>();
        foreach (var symbol in carried)
        {
            var type = TypeOfSymbol(symbol);
            var id = NewValue(symbol.Name, type, fromLocal: true);
            results.Add(id);
            _scope.Bind(symbol, Operand.Value(id, type));
        }
        _body.Steps.Add(new LoopModel(
            loopId, description, LocationText(origin.Syntax.GetLocation()), countCode,
            carriedIn.ToEquatableArray(), bodyIn.ToEquatableArray(), bodySteps.ToEquatableArray(),
            bodyOut.ToEquatableArray(), results.ToEquatableArray(), countValue));
    }

    /// <summary>Locals and parameters bound outside <paramref name="operations"/> that they assign, in order.</summary>
    private List<ISymbol> AssignedOuterSymbols(IEnumerable<IOperation> operations)
    {
        var assigned = new List<ISymbol>();
        void Add(IOperation? target)
        {
            if (target is not null && LocalSymbolOf(target) is { } symbol && _scope.Lookup(symbol) is not null
                && !assigned.Contains(symbol, SymbolEqualityComparer.Default))
            {
                assigned.Add(symbol);
            }
        }
        foreach (var operation in operations)
        {
            foreach (var descendant in operation.DescendantsAndSelf())
            {
                switch (descendant)
                {
                    case ISimpleAssignmentOperation assignment:
                        Add(assignment.Target);
                        break;
                    case ICompoundAssignmentOperation compound:
                        Add(compound.Target);
                        break;
                    case IIncrementOrDecrementOperation increment:
                        Add(increment.Target);
                        break;
                    case IDeconstructionAssignmentOperation deconstruction:
                        var targets = new List<IOperation>();
                        FlattenTargets(deconstruction.Target, targets);
                        targets.ForEach(Add);
                        break;
                    case IExpressionStatementOperation { Operation: IInvocationOperation invocation }
                        when invocation.Instance is not null && IsInPlaceName(invocation.TargetMethod.Name):
                        Add(invocation.Instance);
                        break;
                }
            }
        }
        return assigned;
    }

    private static ITypeSymbol? TypeOfSymbol(ISymbol symbol) => symbol switch
    {
        ILocalSymbol local => local.Type,
        IParameterSymbol parameter => parameter.Type,
        _ => null,
    };
}
