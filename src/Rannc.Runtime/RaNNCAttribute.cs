namespace Rannc;

/// <summary>
/// Marks a TorchSharp module whose <c>forward()</c> is captured into a dataflow graph at build time.
/// The class must be <c>partial</c> and derive from <c>Module&lt;T1, TResult&gt;</c> (up to six inputs; see <see cref="BatchAttribute"/>
/// for where each input holds the batch);
/// the Rannc source generator adds an implementation of <see cref="Capture.ICapturedModule"/> to it.
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false, AllowMultiple = false)]
public sealed class RaNNCAttribute : Attribute
{
}
