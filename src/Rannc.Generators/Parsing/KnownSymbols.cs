using Microsoft.CodeAnalysis;

namespace Rannc.Generators.Parsing;

/// <summary>The TorchSharp and Rannc types the parser recognises, looked up once per compilation.</summary>
internal sealed class KnownSymbols
{
    public const string RaNNCAttributeName = "Rannc.RaNNCAttribute";

    private KnownSymbols(Compilation compilation)
    {
        Compilation = compilation;
        Tensor = compilation.GetTypeByMetadataName("TorchSharp.torch+Tensor");
        Module = compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module");
        DisposeScope = compilation.GetTypeByMetadataName("TorchSharp.DisposeScope");
        Sequential = compilation.GetTypeByMetadataName("TorchSharp.Modules.Sequential");
        RaNNCAttribute = compilation.GetTypeByMetadataName(RaNNCAttributeName);
        TypedModules = new[]
        {
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`2"),
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`3"),
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`4"),
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`5"),
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`6"),
            compilation.GetTypeByMetadataName("TorchSharp.torch+nn+Module`7"),
        };
    }

    /// <summary>The compilation, to ask whether generated code (inside the [RaNNC] class) may refer to a symbol.</summary>
    public Compilation Compilation { get; }

    public INamedTypeSymbol? Tensor { get; }

    public INamedTypeSymbol? Module { get; }

    public INamedTypeSymbol? DisposeScope { get; }

    public INamedTypeSymbol? Sequential { get; }

    public INamedTypeSymbol? RaNNCAttribute { get; }

    /// <summary><c>Module&lt;T1,TResult&gt;</c> up to <c>Module&lt;T1,...,T6,TResult&gt;</c>.</summary>
    public INamedTypeSymbol?[] TypedModules { get; }

    public static KnownSymbols Create(Compilation compilation) => new(compilation);

    public bool IsTensor(ITypeSymbol? type) => DerivesFrom(type, Tensor);

    public bool IsModule(ITypeSymbol? type) => DerivesFrom(type, Module);

    public bool IsDisposeScope(ITypeSymbol? type) =>
        type is not null && SymbolEqualityComparer.Default.Equals(type, DisposeScope);

    public bool HasRaNNCAttribute(ITypeSymbol? type)
    {
        if (type is null || RaNNCAttribute is null)
        {
            return false;
        }
        foreach (var attribute in type.GetAttributes())
        {
            if (SymbolEqualityComparer.Default.Equals(attribute.AttributeClass, RaNNCAttribute))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The <c>Module&lt;...&gt;</c> base that fixes forward()'s signature, or null.</summary>
    public INamedTypeSymbol? TypedModuleBase(INamedTypeSymbol type)
    {
        for (var current = type.BaseType; current is not null; current = current.BaseType)
        {
            foreach (var typed in TypedModules)
            {
                if (typed is not null && SymbolEqualityComparer.Default.Equals(current.OriginalDefinition, typed))
                {
                    return current;
                }
            }
        }
        return null;
    }

    public static bool IsInTorchSharp(ISymbol? symbol)
    {
        var ns = symbol is INamespaceSymbol n ? n : symbol?.ContainingNamespace;
        while (ns is not null && !ns.IsGlobalNamespace)
        {
            if (ns.ContainingNamespace is { IsGlobalNamespace: true })
            {
                return ns.Name == "TorchSharp";
            }
            ns = ns.ContainingNamespace;
        }
        return false;
    }

    private static bool DerivesFrom(ITypeSymbol? type, INamedTypeSymbol? baseType)
    {
        if (baseType is null)
        {
            return false;
        }
        for (var current = type; current is not null; current = current.BaseType)
        {
            if (SymbolEqualityComparer.Default.Equals(current.OriginalDefinition, baseType))
            {
                return true;
            }
        }
        return false;
    }
}
