using System;
using System.Collections.Generic;
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

/// <summary>The result of parsing one [RaNNC] class: the model to emit (null if nothing can be emitted) and the findings.</summary>
internal sealed class ParseResult
{
    public ParseResult(CaptureModel? model, IReadOnlyList<Finding> findings)
    {
        Model = model;
        Findings = findings;
    }

    public CaptureModel? Model { get; }

    public IReadOnlyList<Finding> Findings { get; }
}

/// <summary>Checks a [RaNNC] class and its forward() signature, then walks forward() into a template.</summary>
internal static class ModuleParser
{
    public static ParseResult Parse(
        INamedTypeSymbol type, KnownSymbols known, Func<SyntaxTree, SemanticModel> semanticModels, CancellationToken cancellation)
    {
        var findings = new List<Finding>();
        var declarations = type.DeclaringSyntaxReferences
            .Select(reference => reference.GetSyntax(cancellation))
            .OfType<TypeDeclarationSyntax>()
            .ToList();
        var identifier = declarations.Count > 0 ? declarations[0].Identifier.GetLocation() : Location.None;

        var canEmit = true;
        if (!declarations.All(d => d.Modifiers.Any(SyntaxKind.PartialKeyword)) || !AreContainingTypesPartial(type))
        {
            findings.Add(new Finding(DiagnosticDescriptors.NotPartial, identifier, new object[] { type.Name }));
            canEmit = false;
        }

        var template = new TemplateModel(default, default, default, default);
        var signatureProblem = SignatureProblem(type, known, out var forward);
        if (signatureProblem is not null)
        {
            var location = forward?.Locations.FirstOrDefault() ?? identifier;
            findings.Add(new Finding(DiagnosticDescriptors.UnsupportedSignature, location, new object[] { type.Name, signatureProblem }));
            if (type.IsGenericType)
            {
                canEmit = false;
            }
        }
        else
        {
            var declaration = (MethodDeclarationSyntax)forward!.DeclaringSyntaxReferences[0].GetSyntax(cancellation);
            var body = semanticModels(declaration.SyntaxTree).GetOperation(declaration, cancellation) as IMethodBodyOperation;
            if (body is null)
            {
                findings.Add(new Finding(DiagnosticDescriptors.UnsupportedSignature, forward.Locations[0],
                    new object[] { type.Name, "forward() has no body" }));
            }
            else
            {
                template = new ForwardWalker(known, type, semanticModels, findings, cancellation).Walk(forward, body);
                template = template with { InputBatching = DeclaredBatching(forward) };
            }
        }

        if (!canEmit)
        {
            return new ParseResult(null, findings);
        }
        var errors = findings.Where(f => f.PreventsCapture).Select(FormatError).ToEquatableArray();
        if (errors.Count > 0)
        {
            template = new TemplateModel(default, default, default, default);
        }
        return new ParseResult(new CaptureModel(DeclarationOf(type), template, errors), findings);
    }

    private static bool AreContainingTypesPartial(INamedTypeSymbol type)
    {
        for (var containing = type.ContainingType; containing is not null; containing = containing.ContainingType)
        {
            foreach (var reference in containing.DeclaringSyntaxReferences)
            {
                if (reference.GetSyntax() is TypeDeclarationSyntax declaration && !declaration.Modifiers.Any(SyntaxKind.PartialKeyword))
                {
                    return false;
                }
            }
        }
        return true;
    }

    /// <summary>Why forward() cannot be captured, or null; <paramref name="forward"/> is set when one was found.</summary>
    private static string? SignatureProblem(INamedTypeSymbol type, KnownSymbols known, out IMethodSymbol? forward)
    {
        forward = null;
        if (type.IsGenericType)
        {
            return "generic classes are not supported; apply [RaNNC] to a non-generic class";
        }
        if (type.TypeKind != TypeKind.Class)
        {
            return "only classes can be captured";
        }
        var moduleBase = known.TypedModuleBase(type);
        if (moduleBase is null)
        {
            return "it must derive from TorchSharp's Module<T1, TResult> ... Module<T1, ..., T6, TResult> (one to six forward() arguments)";
        }
        var candidates = type.GetMembers("forward").OfType<IMethodSymbol>()
            .Where(m => !m.IsStatic && m.DeclaringSyntaxReferences.Length > 0 && m.Parameters.Length == moduleBase.TypeArguments.Length - 1)
            .ToList();
        if (candidates.Count != 1)
        {
            return "declare 'public override " + moduleBase.TypeArguments[moduleBase.TypeArguments.Length - 1].Name
                + " forward(...)' with " + (moduleBase.TypeArguments.Length - 1).ToString(CultureInfo.InvariantCulture)
                + " parameter(s) in the class itself";
        }
        forward = candidates[0];
        if (forward.DeclaringSyntaxReferences[0].GetSyntax() is not MethodDeclarationSyntax)
        {
            return "forward() must be an ordinary method";
        }
        foreach (var parameter in forward.Parameters)
        {
            if (parameter.RefKind != RefKind.None || parameter.IsParams)
            {
                return "forward() parameters must not be 'ref', 'out', 'in' or 'params' (parameter '" + parameter.Name + "')";
            }
        }
        if (!IsTensorOrTupleOfTensors(forward.ReturnType, known))
        {
            return "forward() must return a tensor or a tuple of tensors, not '" + forward.ReturnType.ToDisplayString() + "'";
        }
        return null;
    }

    /// <summary>
    /// Per forward() parameter, the <c>InputBatch</c> its <c>[Batch(dim)]</c>, <c>[NotBatched]</c> or <c>[OffsetsOf("x")]</c>
    /// attribute declares, as C# ("null" where none); empty when no parameter declares one.
    /// </summary>
    private static EquatableArray<string> DeclaredBatching(IMethodSymbol forward)
    {
        var declared = forward.Parameters.Select(DeclaredBatching).ToList();
        return declared.All(d => d == "null") ? default : declared.ToEquatableArray();
    }

    private static string DeclaredBatching(IParameterSymbol parameter)
    {
        const string InputBatch = "global::Rannc.Capture.InputBatch.";
        foreach (var attribute in parameter.GetAttributes())
        {
            var name = attribute.AttributeClass?.ToDisplayString();
            var argument = attribute.ConstructorArguments.Length == 1 ? attribute.ConstructorArguments[0].Value : null;
            switch (name)
            {
                case "Rannc.BatchAttribute" when argument is int dim:
                    return InputBatch + "Along(" + dim.ToString(CultureInfo.InvariantCulture) + ")";
                case "Rannc.NotBatchedAttribute":
                    return InputBatch + "NotBatched";
                case "Rannc.OffsetsOfAttribute" when argument is string input:
                    return InputBatch + "OffsetsOf(" + SymbolDisplay.FormatLiteral(input, quote: true) + ")";
            }
        }
        return "null";
    }

    private static bool IsTensorOrTupleOfTensors(ITypeSymbol type, KnownSymbols known)
    {
        if (known.IsTensor(type))
        {
            return true;
        }
        return type is INamedTypeSymbol { IsTupleType: true } tuple && tuple.TupleElements.All(e => IsTensorOrTupleOfTensors(e.Type, known));
    }

    private static string FormatError(Finding finding)
    {
        var span = finding.Location.GetLineSpan();
        return string.Format(
            CultureInfo.InvariantCulture, "{0}: {1} ({2}({3},{4}))",
            finding.Descriptor.Id,
            finding.ToDiagnostic().GetMessage(CultureInfo.InvariantCulture),
            Path.GetFileName(span.Path),
            span.StartLinePosition.Line + 1,
            span.StartLinePosition.Character + 1);
    }

    private static TypeDeclarationModel DeclarationOf(INamedTypeSymbol type)
    {
        var containing = new List<string>();
        for (var outer = type.ContainingType; outer is not null; outer = outer.ContainingType)
        {
            containing.Insert(0, "partial " + Keyword(outer) + " " + outer.Name);
        }
        var ns = type.ContainingNamespace is { IsGlobalNamespace: false } n ? n.ToDisplayString() : null;
        var fullName = type.ToDisplayString();
        return new TypeDeclarationModel(ns, containing.ToEquatableArray(), Keyword(type), type.Name, fullName, fullName + ".Rannc.g.cs");
    }

    private static string Keyword(INamedTypeSymbol type) => type.IsRecord ? "record" : type.TypeKind == TypeKind.Struct ? "struct" : "class";
}
