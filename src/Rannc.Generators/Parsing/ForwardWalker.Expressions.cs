using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Globalization;
using System.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Operations;

namespace Rannc.Generators.Parsing;

// Expressions: every operation on graph values becomes a node; everything else stays C# code that is folded into
// the nodes that use it. Emitted code is fully qualified and uses named arguments, so it binds to the same overloads
// the user's code bound to, whatever the user's usings.
internal sealed partial class ForwardWalker
{
    private Operand Eval(IOperation operation)
    {
        _cancellation.ThrowIfCancellationRequested();
        if (WritesItsType(operation) && operation.Type is { } written && !IsAccessible(written, operation))
        {
            return ErrorValue(written);
        }
        if (operation.ConstantValue.HasValue && operation is not IConversionOperation { IsImplicit: false })
        {
            return new Operand(LiteralCode(operation.ConstantValue.Value, operation.Type), operation.Type);
        }
        switch (operation)
        {
            case IParameterReferenceOperation parameter:
                return Lookup(parameter.Parameter, operation);
            case ILocalReferenceOperation local:
                return Lookup(local.Local, operation);
            case IInstanceReferenceOperation:
                return new Operand("this", _type);
            case IConversionOperation conversion:
                return Conversion(conversion);
            case IFieldReferenceOperation field:
                return Member(field, field.Field, field.Instance, field.Field.IsStatic);
            case IPropertyReferenceOperation property when property.Arguments.Length == 0:
                return Member(property, property.Property, property.Instance, property.Property.IsStatic);
            case IPropertyReferenceOperation indexer:
                return Indexer(indexer);
            case IInvocationOperation invocation:
                return Invocation(invocation);
            case IBinaryOperation binary:
                return Binary(binary);
            case IUnaryOperation unary:
                return Unary(unary);
            case ITupleOperation tuple:
                return Operand.Tuple(tuple.Elements.Select(Eval).ToImmutableArray(), tuple.Type);
            case IArrayCreationOperation array:
                return ArrayCreation(array);
            case IArrayElementReferenceOperation element:
                return ArrayElement(element);
            case IDefaultValueOperation defaultValue:
                return new Operand(defaultValue.Type is null ? "default" : "default(" + defaultValue.Type.ToDisplayString(FullyQualified) + ")", defaultValue.Type);
            case IObjectCreationOperation creation when creation.Initializer is null:
                return ObjectCreation(creation);
            case IObjectCreationOperation creation:
                return CollectionCreation(creation);
            case ICollectionExpressionOperation collection:
                return CollectionExpression(collection);
            case ICoalesceOperation coalesce when coalesce.ValueConversion.IsIdentity:
                return Coalesce(coalesce);
            case IConditionalOperation conditional when conditional.WhenFalse is not null:
                return ConditionalExpression(conditional);
            case IRangeOperation range:
                return Range(range);
            case IIsPatternOperation isPattern when NullTest(isPattern.Pattern) is { } negated:
                return NullCheck(isPattern, isPattern.Value, negated);
            case IAnonymousFunctionOperation:
            case IDelegateCreationOperation:
                Report(DiagnosticDescriptors.UncapturableCall, operation.Syntax.GetLocation(), operation.Syntax.ToString(), TypeName,
                    "lambdas and delegates are not captured; write the computation inline or in a helper method of this class");
                return ErrorValue(operation.Type);
            default:
                Report(DiagnosticDescriptors.UnsupportedConstruct, operation.Syntax.GetLocation(), TypeName,
                    "the expression '" + operation.Syntax + "' (" + operation.Kind + ")",
                    "compute it with tensor operations, locals and configuration fields");
                return ErrorValue(operation.Type);
        }
    }

    /// <summary>Operations whose translation names their type (a cast, <c>default(T)</c>, a creation, an enum constant).</summary>
    private static bool WritesItsType(IOperation operation) => operation switch
    {
        IConversionOperation { IsImplicit: false } => true,
        IDefaultValueOperation or IArrayCreationOperation or IObjectCreationOperation or ICollectionExpressionOperation => true,
        _ => operation.ConstantValue.HasValue && operation.Type is INamedTypeSymbol { TypeKind: TypeKind.Enum },
    };

    /// <summary>A value no node produces: keeps data dependence flowing after a reported problem.</summary>
    private Operand ErrorValue(ITypeSymbol? type)
    {
        var id = NewValue("error", type);
        _errorValues.Add(id);
        return Operand.Value(id, type);
    }

    /// <summary>A member of a value that is already reported as wrong would only repeat that report.</summary>
    private bool IsErrorValue(Operand operand) => operand.SingleValue is { } id && _errorValues.Contains(id);

    private Operand Lookup(ISymbol symbol, IOperation origin)
    {
        if (_scope.Lookup(symbol) is { } value)
        {
            return value;
        }
        Report(DiagnosticDescriptors.UnsupportedConstruct, origin.Syntax.GetLocation(), TypeName,
            "'" + symbol.Name + "' before a value was assigned to it", "initialise the local where it is declared");
        return ErrorValue(TypeOfSymbol(symbol));
    }

    private Operand Conversion(IConversionOperation conversion)
    {
        var inner = Eval(conversion.Operand);
        if (conversion.IsImplicit || conversion.Conversion.IsIdentity)
        {
            // the compiler applies the same implicit conversion again where the code is used
            return inner.IsTuple ? inner : new Operand(inner.Code, inner.Type, inner.IsModule);
        }
        var type = conversion.Type!;
        return new Operand("((" + type.ToDisplayString(FullyQualified) + ")(" + inner.Code + "))", type, inner.IsModule && _known.IsModule(type));
    }

    private Operand Member(IOperation operation, ISymbol member, IOperation? instance, bool isStatic)
    {
        var type = operation.Type;
        if (isStatic)
        {
            if (!IsAccessible(member, operation))
            {
                return ErrorValue(type);
            }
            return new Operand(member.ContainingType.ToDisplayString(FullyQualified) + "." + Escape(member.Name), type, _known.IsModule(type));
        }
        var receiver = instance is null ? new Operand("this", _type) : Eval(instance);
        if (receiver.IsList && member.Name == "Count")
        {
            return new Operand(receiver.ListElements.Length.ToString(CultureInfo.InvariantCulture), type);
        }
        if (receiver.IsTuple)
        {
            var position = TupleItemPosition(member);
            if (position >= 0 && position < receiver.Items.Length)
            {
                return receiver.Items[position];
            }
        }
        var code = receiver.Code + "." + Escape(member.Name);
        if (receiver.Code == "this" || receiver.IsModule)
        {
            if (_known.IsModule(type))
            {
                return new Operand(code, type, isModule: true);
            }
            if (_known.IsTensor(type))
            {
                return AttributeRead(operation, code, receiver.Code == "this" ? member.Name : DisplayTarget(operation.Syntax), type!);
            }
            return new Operand(code, type);
        }
        if (!receiver.DependsOnValues)
        {
            return new Operand(code, type, _known.IsModule(type));
        }
        if (KnownSymbols.IsInTorchSharp(member.ContainingType))
        {
            return AddNode("TensorMethod", DisplayTorchSharpType(member.ContainingType), member.Name, operation, type, code, valueName: member.Name);
        }
        if (member.ContainingType.SpecialType == SpecialType.System_Array || member.ContainingType is IArrayTypeSymbol
            || (member.Name == "Length" && instance?.Type is IArrayTypeSymbol))
        {
            return AddNode("Expression", string.Empty, member.Name, operation, type, code, valueName: member.Name);
        }
        if (!IsErrorValue(receiver))
        {
            Report(DiagnosticDescriptors.UncapturableCall, operation.Syntax.GetLocation(), member.ToDisplayString(), TypeName,
                "only members of TorchSharp types are captured on graph values");
        }
        return ErrorValue(type);
    }

    private static int TupleItemPosition(ISymbol member)
    {
        if (member is IFieldSymbol field && field.ContainingType.IsTupleType)
        {
            var corresponding = field.CorrespondingTupleField ?? field;
            var elements = field.ContainingType.TupleElements;
            for (var i = 0; i < elements.Length; i++)
            {
                if (SymbolEqualityComparer.Default.Equals(elements[i], corresponding) || elements[i].Name == field.Name)
                {
                    return i;
                }
            }
        }
        return -1;
    }

    /// <summary>A read of a parameter or buffer of the module: one node per body, reused by later reads.</summary>
    private Operand AttributeRead(IOperation operation, string code, string target, ITypeSymbol type)
    {
        if (_body.FindAttributeRead(code) is { } existing)
        {
            return existing;
        }
        var value = AddNode("Attribute", target, "get", operation, type, code, targetCode: code,
            valueName: target.Replace('.', '_'), explicitInputs: new List<int>());
        _body.AttributeReads[code] = value;
        return value;
    }

    private Operand Indexer(IPropertyReferenceOperation indexer)
    {
        var receiver = indexer.Instance is null ? new Operand("this", _type) : Eval(indexer.Instance);
        if (receiver.IsList && indexer.Arguments.Length == 1 && indexer.Arguments[0].Value.ConstantValue is { HasValue: true, Value: int position }
            && position >= 0 && position < receiver.ListElements.Length)
        {
            return receiver.ListElements[position];
        }
        var arguments = indexer.Arguments.Select(argument => Eval(argument.Value)).ToList();
        var code = receiver.Code + "[" + string.Join(", ", arguments.Select(a => a.Code)) + "]";
        var type = indexer.Type;
        if (!receiver.DependsOnValues && arguments.All(a => !a.DependsOnValues))
        {
            return new Operand(code, type, receiver.IsModule && _known.IsModule(type));
        }
        if (KnownSymbols.IsInTorchSharp(indexer.Property.ContainingType))
        {
            return AddNode("TensorMethod", DisplayTorchSharpType(indexer.Property.ContainingType), "this[]", indexer, type, code, valueName: "index");
        }
        Report(DiagnosticDescriptors.UncapturableCall, indexer.Syntax.GetLocation(), indexer.Property.ToDisplayString(), TypeName,
            "only TorchSharp indexers are captured on graph values");
        return ErrorValue(type);
    }

    private Operand ArrayElement(IArrayElementReferenceOperation element)
    {
        var array = Eval(element.ArrayReference);
        var indices = element.Indices.Select(Eval).ToList();
        var code = "(" + array.Code + ")[" + string.Join(", ", indices.Select(i => i.Code)) + "]";
        if (!array.DependsOnValues && indices.All(i => !i.DependsOnValues))
        {
            return new Operand(code, element.Type, array.IsModule && _known.IsModule(element.Type));
        }
        return AddNode("Expression", string.Empty, "index", element, element.Type, code, valueName: "item");
    }

    private Operand ArrayCreation(IArrayCreationOperation array)
    {
        var elementType = ((IArrayTypeSymbol)array.Type!).ElementType.ToDisplayString(FullyQualified);
        if (array.Initializer is { } initializer)
        {
            var elements = initializer.ElementValues.Select(Eval).ToList();
            return new Operand("new " + elementType + "[] { " + string.Join(", ", elements.Select(e => e.Code)) + " }", array.Type);
        }
        var sizes = array.DimensionSizes.Select(Eval).ToList();
        return new Operand("new " + elementType + "[" + string.Join(", ", sizes.Select(s => s.Code)) + "]", array.Type);
    }

    private Operand ObjectCreation(IObjectCreationOperation creation)
    {
        if (IsList(creation.Type) && creation.Arguments.All(argument => argument.ArgumentKind == ArgumentKind.DefaultValue || argument.Value.ConstantValue.HasValue))
        {
            return Operand.List(ImmutableArray<Operand>.Empty, creation.Type!, _nextListIdentity++);
        }
        var arguments = creation.Arguments
            .Where(argument => argument.ArgumentKind != ArgumentKind.DefaultValue)
            .Select(argument => "@" + argument.Parameter!.Name + ": " + Eval(argument.Value).Code);
        var code = "new " + creation.Type!.ToDisplayString(FullyQualified) + "(" + string.Join(", ", arguments) + ")";
        if (Operand.ValuesIn(code).Count == 0)
        {
            return new Operand(code, creation.Type);
        }
        return AddNode("Expression", string.Empty, "new " + creation.Type.Name, creation, creation.Type, code, valueName: creation.Type.Name);
    }

    /// <summary>
    /// <c>new List&lt;Tensor&gt; { a, b }</c>: folded into the code of the node that uses it (creating a collection is pure),
    /// so <c>torch.cat(new List&lt;Tensor&gt; { a, b }, 1)</c> is one node that reads a and b.
    /// </summary>
    private Operand CollectionCreation(IObjectCreationOperation creation)
    {
        var elements = new List<string>();
        var listElements = IsList(creation.Type) ? ImmutableArray.CreateBuilder<Operand>() : null;
        foreach (var initializer in creation.Initializer!.Initializers)
        {
            var arguments = initializer switch
            {
                IInvocationOperation { TargetMethod.Name: "Add" } add => add.Arguments.Select(a => a.Value).ToList(),
                _ => null,
            };
            if (arguments is null || arguments.Count == 0)
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, initializer.Syntax.GetLocation(), TypeName,
                    "the initializer '" + initializer.Syntax + "'", "only collection initializers ('{ a, b }') are captured; set members after construction in the constructor");
                return ErrorValue(creation.Type);
            }
            var codes = arguments.Select(argument => Eval(argument)).ToList();
            elements.Add(codes.Count == 1 ? codes[0].Code : "{ " + string.Join(", ", codes.Select(c => c.Code)) + " }");
            listElements?.Add(codes[0]);
        }
        if (listElements is not null && creation.Arguments.All(argument => argument.ArgumentKind == ArgumentKind.DefaultValue))
        {
            return Operand.List(listElements.ToImmutable(), creation.Type!, _nextListIdentity++);
        }
        var constructorArguments = creation.Arguments
            .Where(argument => argument.ArgumentKind != ArgumentKind.DefaultValue)
            .Select(argument => "@" + argument.Parameter!.Name + ": " + Eval(argument.Value).Code);
        return new Operand(
            "new " + creation.Type!.ToDisplayString(FullyQualified) + "(" + string.Join(", ", constructorArguments) + ") { " + string.Join(", ", elements) + " }",
            creation.Type);
    }

    /// <summary>
    /// <c>[-1L]</c>, <c>[a, b]</c>: written as an array or a collection initializer of the target type, which is the
    /// same collection the compiler builds; spreads (<c>[..xs]</c>) are not translated.
    /// </summary>
    private Operand CollectionExpression(ICollectionExpressionOperation collection)
    {
        var type = collection.Type;
        foreach (var element in collection.Elements)
        {
            if (element is ISpreadOperation)
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, element.Syntax.GetLocation(), TypeName,
                    "the spread '" + element.Syntax + "' in a collection expression", "list the elements, or build the array with torch functions");
                return ErrorValue(type);
            }
        }
        var elements = string.Join(", ", collection.Elements.Select(element => Eval(element).Code));
        ITypeSymbol? elementType = type switch
        {
            IArrayTypeSymbol array => array.ElementType,
            INamedTypeSymbol { TypeArguments.Length: 1 } named when IsArrayCompatible(named) => named.TypeArguments[0],
            _ => null,
        };
        if (elementType is not null)
        {
            return new Operand("new " + elementType.ToDisplayString(FullyQualified) + "[] { " + elements + " }", type);
        }
        if (type is INamedTypeSymbol { TypeKind: TypeKind.Class, IsAbstract: false } concrete
            && concrete.InstanceConstructors.Any(c => c.Parameters.Length == 0 && c.DeclaredAccessibility == Accessibility.Public))
        {
            return new Operand("new " + concrete.ToDisplayString(FullyQualified) + "() { " + elements + " }", type);
        }
        Report(DiagnosticDescriptors.UnsupportedConstruct, collection.Syntax.GetLocation(), TypeName,
            "a collection expression of type '" + type?.ToDisplayString() + "'", "create the collection with 'new T[] { ... }' or 'new List<T> { ... }'");
        return ErrorValue(type);
    }

    private static bool IsList(ITypeSymbol? type) =>
        type is INamedTypeSymbol named && named.OriginalDefinition.ToDisplayString() == "System.Collections.Generic.List<T>";

    /// <summary>Spans and the read-only collection interfaces an array converts to.</summary>
    private static bool IsArrayCompatible(INamedTypeSymbol type)
    {
        var definition = type.OriginalDefinition.ToDisplayString();
        return definition is "System.ReadOnlySpan<T>" or "System.Span<T>" or "System.Collections.Generic.IEnumerable<T>"
            or "System.Collections.Generic.IReadOnlyList<T>" or "System.Collections.Generic.IReadOnlyCollection<T>"
            or "System.Collections.Generic.IList<T>" or "System.Collections.Generic.ICollection<T>";
    }

    /// <summary>
    /// <c>mask ?? fallback</c>: on configuration a plain expression (or a branch when the fallback adds nodes); on an
    /// optional input a branch on whether it is null, resolved from the first batch like <c>mask is not null ? mask : fallback</c>.
    /// </summary>
    private Operand Coalesce(ICoalesceOperation coalesce)
    {
        var value = Eval(coalesce.Value);
        if (!value.DependsOnValues && !ContainsGraphWork(coalesce.WhenNull))
        {
            var fallback = Eval(coalesce.WhenNull);
            if (!fallback.DependsOnValues)
            {
                // a choice between submodules is still a submodule: its call must be a Module node that owns the parameters
                return new Operand("((" + value.Code + ") ?? (" + fallback.Code + "))", coalesce.Type, value.IsModule && fallback.IsModule);
            }
        }
        var boolean = _known.Compilation.GetSpecialType(SpecialType.System_Boolean);
        var code = "((object?)(" + value.Code + ") != null)";
        var isNotNull = value.DependsOnValues
            ? AddNode("Expression", string.Empty, "is not null", coalesce, boolean, code, valueName: "isNull", shapeLike: true)
            : new Operand(code, boolean);
        return Branch(
            coalesce,
            coalesce.Value.Syntax + " ?? ...",
            isNotNull,
            new List<Func<Operand?>> { () => value, () => Eval(coalesce.WhenNull) },
            new List<IOperation> { coalesce.WhenNull },
            coalesce.Type)!;
    }

    /// <summary>For the patterns 'null' and 'not null', whether the test is negated; otherwise null.</summary>
    private static bool? NullTest(IPatternOperation pattern) => pattern switch
    {
        IConstantPatternOperation { Value.ConstantValue: { HasValue: true, Value: null } } => false,
        INegatedPatternOperation { Pattern: IConstantPatternOperation { Value.ConstantValue: { HasValue: true, Value: null } } } => true,
        _ => null,
    };

    /// <summary><c>field is null</c> / <c>field is not null</c> on configuration (an optional submodule).</summary>
    private Operand NullCheck(IOperation operation, IOperation tested, bool negated)
    {
        var value = Eval(tested);
        var code = "((object?)(" + value.Code + ") " + (negated ? "!=" : "==") + " null)";
        if (value.DependsOnValues)
        {
            // an optional input (Tensor? mask = null): whether it is null is known from the first batch, like a shape
            return AddNode("Expression", string.Empty, negated ? "is not null" : "is null", operation, operation.Type, code,
                valueName: "isNull", shapeLike: true);
        }
        return new Operand(code, operation.Type);
    }

    private Operand Range(IRangeOperation range)
    {
        var low = range.LeftOperand is null ? string.Empty : "(" + Eval(range.LeftOperand).Code + ")";
        var high = range.RightOperand is null ? string.Empty : "(" + Eval(range.RightOperand).Code + ")";
        return new Operand("(" + low + ".." + high + ")", range.Type);
    }

    private Operand Binary(IBinaryOperation binary)
    {
        var left = Eval(binary.LeftOperand);
        var right = Eval(binary.RightOperand);
        var token = BinaryToken(binary.OperatorKind);
        if (token is null)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, binary.Syntax.GetLocation(), TypeName,
                "the operator " + binary.OperatorKind, "use a TorchSharp function instead");
            return ErrorValue(binary.Type);
        }
        var code = "(" + left.Code + ") " + token + " (" + right.Code + ")";
        if (!left.DependsOnValues && !right.DependsOnValues)
        {
            return new Operand(code, binary.Type);
        }
        return AddNode("Operator", OperatorTarget(binary.OperatorMethod, binary.Type), OperatorName(binary.OperatorMethod, binary.OperatorKind.ToString()),
            binary, binary.Type, code, valueName: OperatorValueName(binary.OperatorKind.ToString()));
    }

    private Operand CompoundValue(ICompoundAssignmentOperation compound)
    {
        var left = Eval(compound.Target);
        var right = Eval(compound.Value);
        var token = BinaryToken(compound.OperatorKind);
        if (token is null)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, compound.Syntax.GetLocation(), TypeName,
                "the operator " + compound.OperatorKind, "use a TorchSharp function instead");
            return ErrorValue(compound.Type);
        }
        var code = "(" + left.Code + ") " + token + " (" + right.Code + ")";
        if (!left.DependsOnValues && !right.DependsOnValues)
        {
            return new Operand(code, compound.Type);
        }
        return AddNode("Operator", OperatorTarget(compound.OperatorMethod, compound.Type), OperatorName(compound.OperatorMethod, compound.OperatorKind.ToString()),
            compound, compound.Type, code, valueName: OperatorValueName(compound.OperatorKind.ToString()));
    }

    private Operand Unary(IUnaryOperation unary)
    {
        var operand = Eval(unary.Operand);
        var token = unary.OperatorKind switch
        {
            UnaryOperatorKind.Minus => "-",
            UnaryOperatorKind.Plus => "+",
            UnaryOperatorKind.Not => "!",
            UnaryOperatorKind.BitwiseNegation => "~",
            UnaryOperatorKind.Hat => "^",
            _ => null,
        };
        if (token is null)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, unary.Syntax.GetLocation(), TypeName,
                "the operator " + unary.OperatorKind, "use a TorchSharp function instead");
            return ErrorValue(unary.Type);
        }
        var code = token + "(" + operand.Code + ")";
        if (!operand.DependsOnValues)
        {
            return new Operand(code, unary.Type);
        }
        return AddNode("Operator", OperatorTarget(unary.OperatorMethod, unary.Type), OperatorName(unary.OperatorMethod, unary.OperatorKind.ToString()),
            unary, unary.Type, code, valueName: OperatorValueName(unary.OperatorKind.ToString()));
    }

    private static string OperatorTarget(IMethodSymbol? method, ITypeSymbol? type) =>
        (method?.ContainingType ?? type)?.ToDisplayString() ?? string.Empty;

    private static string OperatorName(IMethodSymbol? method, string kind) => method?.Name ?? kind;

    private static string OperatorValueName(string kind) => kind.ToLowerInvariant();

    private static string? BinaryToken(BinaryOperatorKind kind) => kind switch
    {
        BinaryOperatorKind.Add => "+",
        BinaryOperatorKind.Subtract => "-",
        BinaryOperatorKind.Multiply => "*",
        BinaryOperatorKind.Divide => "/",
        BinaryOperatorKind.Remainder => "%",
        BinaryOperatorKind.And => "&",
        BinaryOperatorKind.Or => "|",
        BinaryOperatorKind.ExclusiveOr => "^",
        BinaryOperatorKind.ConditionalAnd => "&&",
        BinaryOperatorKind.ConditionalOr => "||",
        BinaryOperatorKind.LeftShift => "<<",
        BinaryOperatorKind.RightShift => ">>",
        BinaryOperatorKind.Equals => "==",
        BinaryOperatorKind.NotEquals => "!=",
        BinaryOperatorKind.LessThan => "<",
        BinaryOperatorKind.LessThanOrEqual => "<=",
        BinaryOperatorKind.GreaterThan => ">",
        BinaryOperatorKind.GreaterThanOrEqual => ">=",
        _ => null,
    };

    // ------------------------------------------------------------------ calls

    private Operand Invocation(IInvocationOperation invocation)
    {
        var method = invocation.TargetMethod;
        var receiver = invocation.Instance is null ? null : Eval(invocation.Instance);

        // dispose-scope plumbing is transparent: values' lifetimes belong to the runtime
        if (_known.IsDisposeScope(invocation.Type))
        {
            return Operand.Transparent;
        }
        if (_known.IsDisposeScope(method.ContainingType) && method.Name == "MoveToOuter" && invocation.Arguments.Length == 1)
        {
            return Eval(invocation.Arguments[0].Value);
        }
        if (receiver is not null && _known.IsTensor(method.ContainingType)
            && (method.Name == "MoveToOuterDisposeScope" || method.Name == "DetachFromDisposeScope"))
        {
            return receiver;
        }

        if (receiver is { IsModule: true } && (method.Name == "forward" || method.Name == "call") && _known.IsModule(method.ContainingType))
        {
            return ModuleCall(invocation, receiver);
        }
        if (IsInlinableHelper(invocation))
        {
            return InlineHelper(invocation);
        }
        if (receiver is not null && receiver.Code == "this")
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), method.ToDisplayString(), TypeName,
                "it is not a helper method with source in this class (it is virtual, abstract or inherited); move the computation into forward() or into a non-virtual helper of this class");
            return ErrorValue(invocation.Type);
        }

        if (!IsAccessible(method, invocation))
        {
            return ErrorValue(invocation.Type);
        }
        var arguments = new List<string>();
        foreach (var argument in invocation.Arguments)
        {
            if (argument.ArgumentKind == ArgumentKind.DefaultValue)
            {
                continue; // the compiler supplies the same default in the emitted call
            }
            if (argument.Parameter is { RefKind: RefKind.Ref or RefKind.Out })
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, argument.Syntax.GetLocation(), TypeName,
                    "a 'ref' or 'out' argument", "use the overload that returns the result");
                return ErrorValue(invocation.Type);
            }
            arguments.Add("@" + argument.Parameter!.Name + ": " + Eval(argument.Value).Code);
        }
        var name = Escape(method.Name);
        if (method.IsGenericMethod)
        {
            name += "<" + string.Join(", ", method.TypeArguments.Select(t => t.ToDisplayString(FullyQualified))) + ">";
        }
        var isStaticCall = method.IsStatic || receiver is null;
        var code = (isStaticCall ? method.ContainingType.ToDisplayString(FullyQualified) : receiver!.Code) + "." + name + "(" + string.Join(", ", arguments) + ")";
        var dependsOnValues = Operand.ValuesIn(code).Count > 0;
        var containingType = method.ContainingType;
        var returnsTensor = _known.IsTensor(invocation.Type) || invocation.Type is INamedTypeSymbol { IsTupleType: true };

        if (isStaticCall && KnownSymbols.IsInTorchSharp(containingType))
        {
            if (!dependsOnValues && !returnsTensor)
            {
                return new Operand(code, invocation.Type);
            }
            return AddNode("Function", DisplayTorchSharpType(containingType), method.Name, invocation, invocation.Type, code);
        }
        if (isStaticCall && IsPureMathType(containingType))
        {
            return dependsOnValues
                ? AddNode("Function", containingType.ToDisplayString(), method.Name, invocation, invocation.Type, code)
                : new Operand(code, invocation.Type);
        }
        if (!isStaticCall && KnownSymbols.IsInTorchSharp(containingType) && (dependsOnValues || returnsTensor))
        {
            var node = AddNode("TensorMethod", DisplayTorchSharpType(containingType), method.Name, invocation, invocation.Type, code,
                inPlace: IsInPlaceName(method.Name) && _known.IsTensor(method.ContainingType));
            if (IsInPlaceName(method.Name) && Operand.ValuesIn(code) is { Count: > 0 } inputs)
            {
                _inPlaceUses.Add(new InPlaceUse(inputs[0], _currentLoopId, invocation.Syntax.GetLocation(), method.Name));
            }
            return node;
        }
        if (!dependsOnValues)
        {
            return new Operand(code, invocation.Type);
        }
        if (receiver is null || !IsErrorValue(receiver))
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), method.ToDisplayString(), TypeName,
                "only TorchSharp functions, tensor methods, System.Math, submodule calls and helper methods (of this class, or static ones with source in this project) are captured; move this logic into a [RaNNC] submodule or a helper method of this class");
        }
        return ErrorValue(invocation.Type);
    }

    /// <summary>
    /// Generated code runs inside the [RaNNC] class, so a member that an inlined helper of another class may use but this
    /// class may not (a private field of that class) cannot be emitted: reported at the use.
    /// </summary>
    private bool IsAccessible(ISymbol symbol, IOperation origin)
    {
        if (_known.Compilation.IsSymbolAccessibleWithin(symbol, _type))
        {
            return true;
        }
        Report(DiagnosticDescriptors.UncapturableCall, origin.Syntax.GetLocation(), symbol.ToDisplayString(), TypeName,
            "the generated code runs inside '" + TypeName + "', which cannot access it; make it internal or public");
        return false;
    }

    private static bool IsPureMathType(INamedTypeSymbol type)
    {
        var name = type.ToDisplayString();
        return name == "System.Math" || name == "System.MathF";
    }

    private static string DisplayTorchSharpType(INamedTypeSymbol type)
    {
        var name = type.ToDisplayString();
        return name.StartsWith("TorchSharp.", StringComparison.Ordinal) ? name.Substring("TorchSharp.".Length) : name;
    }

    /// <summary>A call of a submodule: one node whose inputs are forward()'s arguments in parameter order.</summary>
    private Operand ModuleCall(IInvocationOperation invocation, Operand receiver)
    {
        var method = invocation.TargetMethod;
        var ordered = invocation.Arguments.OrderBy(argument => argument.Parameter!.Ordinal).ToList();
        var inputs = new List<int>();
        var arguments = new List<string>();
        foreach (var argument in ordered)
        {
            var id = Materialize(Eval(argument.Value), argument);
            var type = _values[id].TypeName;
            arguments.Add("@" + argument.Parameter!.Name + ": frame.Input<" + type + ">(" + inputs.Count.ToString(CultureInfo.InvariantCulture) + ")");
            inputs.Add(id);
        }
        var code = receiver.Code + "." + Escape(method.Name) + "(" + string.Join(", ", arguments) + ")";
        var target = DisplayTarget(invocation.Instance!.Syntax);
        var staticType = Strip(invocation.Instance!).Type;
        if (staticType is INamedTypeSymbol named && !KnownSymbols.IsInTorchSharp(named) && !_known.HasRaNNCAttribute(named) && !named.IsAbstract)
        {
            Report(DiagnosticDescriptors.LeafSubmodule, invocation.Syntax.GetLocation(), target, named.Name);
        }
        else if (staticType is INamedTypeSymbol container && !_known.HasRaNNCAttribute(container)
            && (container.IsAbstract || (_known.Sequential is not null && SymbolEqualityComparer.Default.Equals(container, _known.Sequential))))
        {
            Report(DiagnosticDescriptors.ContainerSubmodule, invocation.Syntax.GetLocation(), target,
                container.ToDisplayString(SymbolDisplayFormat.MinimallyQualifiedFormat));
        }
        return AddNode("Module", target, method.Name, invocation, invocation.Type, code,
            targetCode: receiver.Code, valueName: target.Replace('.', '_').Replace("[", "_").Replace("]", string.Empty),
            explicitInputs: inputs);
    }

    private static string DisplayTarget(SyntaxNode syntax)
    {
        var text = syntax.ToString();
        return text.StartsWith("this.", StringComparison.Ordinal) ? text.Substring("this.".Length) : text;
    }

    private bool IsInlinableHelper(IInvocationOperation invocation)
    {
        var method = invocation.TargetMethod;
        // static helpers of other classes with source here are inlined like the class's own (they cannot touch 'this')
        var owner = SymbolEqualityComparer.Default.Equals(method.ContainingType, _type)
            || (method.IsStatic && !KnownSymbols.IsInTorchSharp(method));
        // a generic helper's body may name its type parameters, which do not exist where the generated code runs
        return owner
            && !method.IsGenericMethod
            && !method.IsVirtual && !method.IsAbstract && !method.IsOverride && !method.IsExtern
            && method.MethodKind == MethodKind.Ordinary
            && method.DeclaringSyntaxReferences.Length == 1
            && method.DeclaringSyntaxReferences[0].GetSyntax(_cancellation) is MethodDeclarationSyntax { Body: not null } or MethodDeclarationSyntax { ExpressionBody: not null }
            && (invocation.Instance is null || Strip(invocation.Instance) is IInstanceReferenceOperation);
    }

    /// <summary>Walks a helper method of this class in place of the call, with its parameters bound to the arguments.</summary>
    private Operand InlineHelper(IInvocationOperation invocation)
    {
        var method = invocation.TargetMethod;
        if (_inlining.Contains(method, SymbolEqualityComparer.Default))
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), method.ToDisplayString(), TypeName,
                "recursive calls cannot be captured; write the repetition as a loop over a module container");
            return ErrorValue(invocation.Type);
        }
        var declaration = (MethodDeclarationSyntax)method.DeclaringSyntaxReferences[0].GetSyntax(_cancellation);
        if (_semanticModels(declaration.SyntaxTree).GetOperation(declaration, _cancellation) is not IMethodBodyOperation body)
        {
            Report(DiagnosticDescriptors.UncapturableCall, invocation.Syntax.GetLocation(), method.ToDisplayString(), TypeName,
                "its body could not be analysed");
            return ErrorValue(invocation.Type);
        }
        var helperScope = new Scope(null);
        foreach (var argument in invocation.Arguments)
        {
            if (argument.Parameter is { RefKind: RefKind.Ref or RefKind.Out })
            {
                Report(DiagnosticDescriptors.UnsupportedConstruct, argument.Syntax.GetLocation(), TypeName,
                    "a 'ref' or 'out' argument", "return the result instead");
                return ErrorValue(invocation.Type);
            }
            helperScope.Bind(argument.Parameter!, Eval(argument.Value));
        }
        var outerScope = _scope;
        var outerReturn = _return;
        _scope = helperScope;
        // 'return' is allowed at the end of the helper's own body, whatever loops or branches surround the call
        _return = new ReturnSink(_loopDepth, _branchDepth, method.ReturnType);
        _inlining.Add(method);
        WalkMethodBody(body, method);
        _inlining.RemoveAt(_inlining.Count - 1);
        var result = _return.Value;
        var returned = _return.Returned;
        _scope = outerScope;
        _return = outerReturn;
        if (method.ReturnsVoid)
        {
            return Operand.Transparent;
        }
        if (!returned || result is null)
        {
            Report(DiagnosticDescriptors.UnsupportedConstruct, invocation.Syntax.GetLocation(), TypeName,
                "the helper '" + method.Name + "' without a final return statement", "end the helper with one 'return' of its result");
            return ErrorValue(invocation.Type);
        }
        return result;
    }

    // ------------------------------------------------------------------ literals

    private static string Escape(string name) => SyntaxFacts.GetKeywordKind(name) != SyntaxKind.None ? "@" + name : name;

    private static string LiteralCode(object? value, ITypeSymbol? type)
    {
        if (value is null)
        {
            return type is null || type.IsReferenceType || type.OriginalDefinition.SpecialType == SpecialType.System_Nullable_T
                ? (type is null ? "null" : "default(" + type.ToDisplayString(FullyQualified) + ")")
                : "default(" + type.ToDisplayString(FullyQualified) + ")";
        }
        if (type is INamedTypeSymbol { TypeKind: TypeKind.Enum } enumType)
        {
            return "((" + enumType.ToDisplayString(FullyQualified) + ")(" + SymbolDisplay.FormatPrimitive(value, quoteStrings: true, useHexadecimalNumbers: false) + "))";
        }
        return value switch
        {
            string text => SymbolDisplay.FormatLiteral(text, quote: true),
            char character => SymbolDisplay.FormatLiteral(character, quote: true),
            bool flag => flag ? "true" : "false",
            float single => FloatingLiteral(single.ToString("R", CultureInfo.InvariantCulture), "F"),
            double number => FloatingLiteral(number.ToString("R", CultureInfo.InvariantCulture), "D"),
            decimal number => number.ToString(CultureInfo.InvariantCulture) + "M",
            long number => number.ToString(CultureInfo.InvariantCulture) + "L",
            ulong number => number.ToString(CultureInfo.InvariantCulture) + "UL",
            uint number => number.ToString(CultureInfo.InvariantCulture) + "U",
            int number => number.ToString(CultureInfo.InvariantCulture),
            short number => "((short)" + number.ToString(CultureInfo.InvariantCulture) + ")",
            ushort number => "((ushort)" + number.ToString(CultureInfo.InvariantCulture) + ")",
            byte number => "((byte)" + number.ToString(CultureInfo.InvariantCulture) + ")",
            sbyte number => "((sbyte)" + number.ToString(CultureInfo.InvariantCulture) + ")",
            _ => SymbolDisplay.FormatPrimitive(value, quoteStrings: true, useHexadecimalNumbers: false),
        };
    }

    private static string FloatingLiteral(string text, string suffix) => text switch
    {
        "NaN" => suffix == "F" ? "float.NaN" : "double.NaN",
        "Infinity" => suffix == "F" ? "float.PositiveInfinity" : "double.PositiveInfinity",
        "-Infinity" => suffix == "F" ? "float.NegativeInfinity" : "double.NegativeInfinity",
        _ => "(" + text + suffix + ")",
    };
}
