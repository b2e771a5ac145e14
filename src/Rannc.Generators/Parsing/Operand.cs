using System.Collections.Generic;
using System.Collections.Immutable;
using System.Globalization;
using System.Linq;
using Microsoft.CodeAnalysis;

namespace Rannc.Generators.Parsing;

/// <summary>
/// What an expression of forward() evaluates to during the walk: a C# fragment in which graph values appear as
/// placeholders (<see cref="Placeholder"/>). A fragment without placeholders does not depend on the inputs
/// (constants, configuration fields, submodule references) and is folded into the code of the node that uses it.
/// A tuple is kept as its items so that deconstruction and returns see the individual values.
/// </summary>
internal sealed class Operand
{
    private const char Open = '\u0001';
    private const char Close = '\u0002';

    public Operand(string code, ITypeSymbol? type, bool isModule = false)
    {
        Code = code;
        Type = type;
        IsModule = isModule;
    }

    private Operand(ImmutableArray<Operand> items, ITypeSymbol? type)
    {
        // a tuple literal, so that the tuple can also be used whole (a `(3, 3)` kernel size argument)
        Code = "(" + string.Join(", ", items.Select(item => item.Code)) + ")";
        Type = type;
        Items = items;
    }

    private Operand(ImmutableArray<Operand> elements, ITypeSymbol type, int listIdentity)
    {
        Code = "new " + type.ToDisplayString(SymbolDisplayFormat.FullyQualifiedFormat) + "() { "
            + string.Join(", ", elements.Select(element => element.Code)) + " }";
        Type = type;
        ListElements = elements;
        ListIdentity = listIdentity;
    }

    public string Code { get; }

    public ITypeSymbol? Type { get; }

    /// <summary>True when the fragment refers to a submodule of the captured instance.</summary>
    public bool IsModule { get; }

    /// <summary>Tuple items; default when the operand is not a tuple.</summary>
    public ImmutableArray<Operand> Items { get; }

    public bool IsTuple => !Items.IsDefault;

    /// <summary>
    /// Elements of a <c>List&lt;T&gt;</c> built in forward() (<c>new List&lt;Tensor&gt;()</c>, then <c>Add</c>); default when the
    /// operand is not such a list. Its code creates the list with the elements added so far.
    /// </summary>
    public ImmutableArray<Operand> ListElements { get; }

    /// <summary>Which list this is: locals that share it (an alias) have the same identity.</summary>
    public int ListIdentity { get; }

    public bool IsList => !ListElements.IsDefault;

    public static Operand List(ImmutableArray<Operand> elements, ITypeSymbol type, int identity) => new(elements, type, identity);

    /// <summary>The same list with one more element.</summary>
    public Operand WithListElement(Operand element) => new(ListElements.Add(element), Type!, ListIdentity);

    /// <summary>A marker for values that do not exist in the graph (a dispose scope).</summary>
    public static Operand Transparent { get; } = new("default!", null);

    public bool DependsOnValues
    {
        get
        {
            if (!IsTuple)
            {
                return Code.IndexOf(Open) >= 0;
            }
            foreach (var item in Items)
            {
                if (item.DependsOnValues)
                {
                    return true;
                }
            }
            return false;
        }
    }

    /// <summary>The value id when the operand is exactly one graph value.</summary>
    public int? SingleValue
    {
        get
        {
            if (IsTuple || Code.Length < 3 || Code[0] != Open || Code[Code.Length - 1] != Close)
            {
                return null;
            }
            var inner = Code.Substring(1, Code.Length - 2);
            return int.TryParse(inner, NumberStyles.None, CultureInfo.InvariantCulture, out var id) ? id : null;
        }
    }

    public static Operand Value(int id, ITypeSymbol? type) => new(Placeholder(id), type);

    public static Operand Tuple(ImmutableArray<Operand> items, ITypeSymbol? type) => new(items, type);

    public static string Placeholder(int id) => Open + id.ToString(CultureInfo.InvariantCulture) + Close;

    /// <summary>Distinct value ids referenced by <paramref name="code"/>, in order of first appearance.</summary>
    public static List<int> ValuesIn(string code)
    {
        var ids = new List<int>();
        var start = code.IndexOf(Open);
        while (start >= 0)
        {
            var end = code.IndexOf(Close, start);
            var id = int.Parse(code.Substring(start + 1, end - start - 1), CultureInfo.InvariantCulture);
            if (!ids.Contains(id))
            {
                ids.Add(id);
            }
            start = code.IndexOf(Open, end);
        }
        return ids;
    }

    /// <summary>Replaces every placeholder by the text <paramref name="replace"/> gives for its value id.</summary>
    public static string Substitute(string code, System.Func<int, string> replace)
    {
        var builder = new System.Text.StringBuilder(code.Length);
        var position = 0;
        var start = code.IndexOf(Open);
        while (start >= 0)
        {
            var end = code.IndexOf(Close, start);
            builder.Append(code, position, start - position);
            builder.Append(replace(int.Parse(code.Substring(start + 1, end - start - 1), CultureInfo.InvariantCulture)));
            position = end + 1;
            start = code.IndexOf(Open, position);
        }
        builder.Append(code, position, code.Length - position);
        return builder.ToString();
    }
}
