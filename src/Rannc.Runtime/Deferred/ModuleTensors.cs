using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Deferred;

/// <summary>
/// Puts new tensor objects in place of a module's parameters and buffers. A tensor built on the <c>meta</c> device
/// cannot be given storage in place (libtorch refuses <c>set_</c> from meta to CPU, and copying out of meta fails), so a
/// deferred model gets new CPU tensors where the meta ones were: through the module's own property when it has one
/// (TorchSharp's <c>Linear.weight</c>, <c>Embedding.weight</c>, …; the same route TorchSharp's <c>Module.to</c> takes),
/// otherwise by re-registering the name and updating every field that held the old object. Tied tensors (one object in
/// several modules) get one new object everywhere. Every replacement is checked afterwards, so a module that keeps
/// its tensors somewhere Rannc cannot reach fails naming it rather than computing with stale tensors.
/// </summary>
internal static class ModuleTensors
{
    private const BindingFlags InstanceMembers = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.DeclaredOnly;

    private static readonly MethodInfo RegisterParameter = typeof(nn.Module).GetMethod(
        "ConditionallyRegisterParameter", BindingFlags.NonPublic | BindingFlags.Instance, [typeof(string), typeof(Parameter)])
        ?? throw new MissingMethodException("TorchSharp's Module.ConditionallyRegisterParameter(string, Parameter) is missing: this TorchSharp is not 0.107.");

    private static readonly MethodInfo RegisterBuffer = typeof(nn.Module).GetMethod(
        "ConditionallyRegisterBuffer", BindingFlags.NonPublic | BindingFlags.Instance, [typeof(string), typeof(Tensor), typeof(bool)])
        ?? throw new MissingMethodException("TorchSharp's Module.ConditionallyRegisterBuffer(string, Tensor, bool) is missing: this TorchSharp is not 0.107.");

    /// <summary>
    /// Replaces the parameters and buffers of <paramref name="model"/> (and its submodules) that <paramref name="replacement"/>
    /// maps, by object: <c>replacement(old)</c> is the new tensor, or null to keep the old one. The old tensors are disposed.
    /// </summary>
    public static void Replace(nn.Module model, Func<Tensor, Tensor?> replacement)
    {
        // Collected first: a property setter disposes the old object (Linear.weight), and a disposed tensor no longer shows in
        // named_parameters(), so a tied weight's second module would be missed if it were read after the first was replaced.
        var modules = new List<nn.Module> { model };
        modules.AddRange(model.named_modules().Select(m => m.module));
        var work = new List<(nn.Module Module, string Name, Tensor Old, bool IsBuffer, bool Persistent)>();
        var seenModules = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (nn.Module module in modules)
        {
            if (!seenModules.Add(module)) continue;
            foreach ((string name, Parameter parameter) in module.named_parameters(recurse: false))
                work.Add((module, name, parameter, false, true));
            var persistent = module.named_buffers(recurse: false, include_nonpersistent: false).Select(b => b.name).ToHashSet();
            foreach ((string name, Tensor buffer) in module.named_buffers(recurse: false, include_nonpersistent: true))
                work.Add((module, name, buffer, true, persistent.Contains(name)));
        }
        var newOf = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var item in work)
        {
            if (!newOf.ContainsKey(item.Old) && replacement(item.Old) is { } fresh) newOf[item.Old] = fresh;
        }
        if (newOf.Count == 0) return;

        foreach ((nn.Module module, string name, Tensor old, bool isBuffer, bool persistent) in work)
        {
            if (!newOf.TryGetValue(old, out Tensor? fresh)) continue;
            PropertyInfo? property = module.GetType().GetProperty(name, BindingFlags.Public | BindingFlags.Instance);
            if (property is { CanWrite: true } && property.PropertyType.IsAssignableFrom(fresh.GetType()))
            {
                property.SetValue(module, fresh);
            }
            else if (isBuffer)
            {
                RegisterBuffer.Invoke(module, [name, fresh, persistent]);
            }
            else
            {
                RegisterParameter.Invoke(module, [name, (Parameter)fresh]);
            }
        }
        // Fields that still hold an old object (a component field without a property, a second reference to a tied tensor).
        foreach (nn.Module module in seenModules)
        {
            for (Type? type = module.GetType(); type is not null && type != typeof(object); type = type.BaseType)
            {
                foreach (FieldInfo field in type.GetFields(InstanceMembers))
                {
                    if (!typeof(Tensor).IsAssignableFrom(field.FieldType) || field.GetValue(module) is not Tensor held) continue;
                    if (newOf.TryGetValue(held, out Tensor? fresh) && field.FieldType.IsAssignableFrom(fresh.GetType())) field.SetValue(module, fresh);
                }
            }
        }
        Check(seenModules, work, newOf);
        foreach (Tensor old in newOf.Keys) old.Dispose();
    }

    /// <summary>Fails naming the module and tensor when a replaced object is still registered or held in a field.</summary>
    private static void Check(IEnumerable<nn.Module> modules, List<(nn.Module Module, string Name, Tensor Old, bool IsBuffer, bool Persistent)> work,
        Dictionary<Tensor, Tensor> newOf)
    {
        foreach ((nn.Module module, string name, Tensor old, bool isBuffer, _) in work)
        {
            if (!newOf.TryGetValue(old, out Tensor? fresh)) continue;
            Tensor? now = isBuffer
                ? module.named_buffers(recurse: false, include_nonpersistent: true).FirstOrDefault(b => b.name == name).buffer
                : module.named_parameters(recurse: false).FirstOrDefault(p => p.name == name).parameter;
            if (!ReferenceEquals(now, fresh) && (now is null || now.Handle != fresh.Handle))
            {
                throw new NotSupportedException(
                    $"Rannc could not give {module.GetType().Name}'s {(isBuffer ? "buffer" : "parameter")} '{name}' its storage: the module does not " +
                    "register the new tensor under that name. Build this model whole (new RanncModule(model, ...)) instead of from a factory.");
            }
        }
        foreach (nn.Module module in modules)
        {
            for (Type? type = module.GetType(); type is not null && type != typeof(object); type = type.BaseType)
            {
                foreach (FieldInfo field in type.GetFields(InstanceMembers))
                {
                    if (typeof(Tensor).IsAssignableFrom(field.FieldType) && field.GetValue(module) is Tensor held && newOf.ContainsKey(held))
                    {
                        throw new NotSupportedException(
                            $"Rannc could not give {module.GetType().Name}'s field '{field.Name}' its new tensor (the field's type is {field.FieldType.Name}). " +
                            "Build this model whole (new RanncModule(model, ...)) instead of from a factory.");
                    }
                }
            }
        }
    }
}
