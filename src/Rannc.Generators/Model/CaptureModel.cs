using Rannc.Generators.Helpers;

namespace Rannc.Generators.Model;

// The parser's output and the emitter's only input. Plain strings, ints and equatable arrays:
// no ISymbol, SyntaxNode or Location, so the incremental pipeline can cache and compare them.

/// <summary>Where the generated partial declaration goes.</summary>
/// <param name="Namespace">Containing namespace, or null for the global namespace.</param>
/// <param name="ContainingTypes">Declarations of enclosing types, outermost first (e.g. <c>partial class Outer</c>).</param>
/// <param name="Keyword">"class" or "record".</param>
/// <param name="Name">The class name.</param>
/// <param name="FullName">Display name used in messages and in the template.</param>
/// <param name="HintName">File name of the generated source.</param>
internal sealed record TypeDeclarationModel(
    string? Namespace, EquatableArray<string> ContainingTypes, string Keyword, string Name, string FullName, string HintName);

internal sealed record ValueModel(int Id, string Name, string TypeName, string Kind);

/// <summary>A template step: a node, a loop or a configuration branch.</summary>
internal abstract record StepModel;

/// <summary>One captured operation.</summary>
/// <param name="ResultCode">C# expression computing the node's result from <c>frame.Input&lt;T&gt;(k)</c>.</param>
/// <param name="OutputAccessors">Per output, the member path into the result ("" for the result itself, ".Item1" for a tuple element).</param>
/// <param name="TargetCode">For Module and Attribute nodes, the expression of the submodule or tensor; otherwise null.</param>
/// <param name="InPlace">True for an in-place tensor method (<c>add_</c>, <c>relu_</c>): its output is its receiver, modified.</param>
internal sealed record NodeModel(
    int Id,
    string Kind,
    string Target,
    string Operation,
    EquatableArray<int> Inputs,
    EquatableArray<int> Outputs,
    string Location,
    string ResultCode,
    EquatableArray<string> OutputAccessors,
    string? TargetCode,
    bool InPlace = false) : StepModel;

/// <param name="Count">For a loop bounded by shapes, the value (computed by a node before the loop) that holds the trip count; otherwise -1.</param>
internal sealed record LoopModel(
    int Id,
    string Description,
    string Location,
    string CountCode,
    EquatableArray<int> CarriedIn,
    EquatableArray<int> BodyIn,
    EquatableArray<StepModel> Body,
    EquatableArray<int> BodyOut,
    EquatableArray<int> Results,
    int Count = -1) : StepModel;

/// <param name="SelectCode">Statements that return the index of the arm this instance takes.</param>
/// <param name="Selector">For a branch on shapes, the value (computed by a node before the branch) that holds the arm index; otherwise -1.</param>
internal sealed record BranchModel(
    int Id,
    string Description,
    string Location,
    string SelectCode,
    EquatableArray<ArmModel> Arms,
    EquatableArray<int> Results,
    int Selector = -1) : StepModel;

internal sealed record ArmModel(EquatableArray<StepModel> Body, EquatableArray<int> Outputs);

/// <param name="InputBatching">Per input, the C# expression of its declared <c>InputBatch</c> ("null" where none); empty when no parameter declares one.</param>
internal sealed record TemplateModel(
    EquatableArray<ValueModel> Values, EquatableArray<int> Inputs, EquatableArray<int> Outputs, EquatableArray<StepModel> Body,
    EquatableArray<string> InputBatching = default);

/// <summary>Everything the emitter needs for one <c>[RaNNC]</c> class.</summary>
/// <param name="Errors">Messages of the diagnostics that prevent capture; when non-empty the template is not emitted.</param>
internal sealed record CaptureModel(TypeDeclarationModel Type, TemplateModel Template, EquatableArray<string> Errors);
