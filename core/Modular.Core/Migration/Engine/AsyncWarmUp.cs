using System.Reflection;
using System.Runtime.CompilerServices;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Compiles ahead the runtime's generic code that an async method needs on its first run: the
/// builder's box over the state machine (AsyncStateMachineBox, or the pooling builder's
/// StateMachineBox), the builder's Start and AwaitUnsafeOnCompleted over the state machine and each
/// awaiter it stores, and the awaiters' own members. ReadyToRun code cannot hold these (they
/// instantiate the runtime's types over Modular's), so without this the JIT compiled 5-10 methods at
/// the first run of every async method: measured, about 110 methods and 65 ms of JIT inside a
/// postcopy migration's 100 ms setup on this host. Nothing is run.
/// </summary>
internal static class AsyncWarmUp
{
    private const BindingFlags All = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static readonly Type VoidResult = typeof(Task).Assembly.GetType("System.Threading.Tasks.VoidTaskResult", throwOnError: false)!;

    /// <summary>Prepares the async machinery of <paramref name="stateMachine"/>; does nothing for any other type.</summary>
    internal static void Prepare(Type stateMachine)
    {
        if (!typeof(IAsyncStateMachine).IsAssignableFrom(stateMachine) || stateMachine.ContainsGenericParameters || VoidResult is null)
        {
            return;
        }

        if (stateMachine.GetField("<>t__builder", All) is not { } builderField)
        {
            return;
        }

        // The state machine's own MoveNext: precompiled where its assembly has ReadyToRun code (not
        // every plugin's does), compiled here where not.
        PrepareMembers(stateMachine, "MoveNext");

        Type builder = builderField.FieldType;
        Type[] awaiters = stateMachine.GetFields(All)
            .Where(f => f.Name.StartsWith("<>u__", StringComparison.Ordinal) && !f.FieldType.ContainsGenericParameters)
            .Select(f => f.FieldType)
            .Distinct()
            .ToArray();

        foreach (Type awaiter in awaiters)
        {
            PrepareMembers(awaiter);
            if (awaiter.IsGenericType && awaiter.DeclaringType is { IsGenericTypeDefinition: true } awaitable && awaitable == typeof(ConfiguredValueTaskAwaitable<>))
            {
                // The awaited ValueTask<T> and ConfigureAwait's result: compiled per T.
                Type result = awaiter.GetGenericArguments()[0];
                PrepareMembers(typeof(ValueTask<>).MakeGenericType(result), ".ctor", "get_IsCompleted", "get_IsCompletedSuccessfully", "get_Result", "ConfigureAwait");
                PrepareMembers(typeof(ConfiguredValueTaskAwaitable<>).MakeGenericType(result), "GetAwaiter");
            }
        }

        foreach (Type each in BuildersBehind(builder))
        {
            PrepareGenericMethods(each, stateMachine, awaiters);
            if (each.IsGenericType && FirstTime(each))
            {
                PrepareResultTypeCode(each);
            }
        }

        foreach (Type box in BoxesFor(builder, stateMachine))
        {
            // What a box's first run compiled (JIT log): its MoveNext overloads (one is an explicit
            // interface implementation), ExecuteFromThreadPool, ExecutionContextCallback, a pooling
            // box's IValueTaskSource members, and its static constructor; the rest is shared code.
            foreach (MethodInfo method in box.GetMethods(All))
            {
                if (method.Name is "MoveNext" or "ExecuteFromThreadPool" or "ExecutionContextCallback" ||
                    method.Name.EndsWith(".MoveNext", StringComparison.Ordinal) || method.Name.EndsWith(".GetResult", StringComparison.Ordinal))
                {
                    TryPrepare(method);
                }
            }

            if (box.TypeInitializer is { } initializer)
            {
                TryPrepare(initializer);
            }
        }
    }

    private static readonly HashSet<Type> Seen = [];

    /// <summary>True the first time <paramref name="type"/> is passed (per-result-type code is prepared once).</summary>
    private static bool FirstTime(Type type)
    {
        lock (Seen)
        {
            return Seen.Add(type);
        }
    }

    /// <summary>
    /// The code a generic builder needs once per result type, whatever the state machine: its own
    /// non-generic members (Create, Task, SetResult), the task's result setters, and for the pooling
    /// builder its boxes' common base and their ManualResetValueTaskSourceCore.
    /// </summary>
    private static void PrepareResultTypeCode(Type builder)
    {
        Type result = builder.GetGenericArguments()[0];
        PrepareMembers(builder);
        PrepareMembers(typeof(Task<>).MakeGenericType(result), "TrySetResult", "get_Result");
        if (builder.GetGenericTypeDefinition() == typeof(PoolingAsyncValueTaskMethodBuilder<>))
        {
            if (typeof(PoolingAsyncValueTaskMethodBuilder<>).GetNestedType("StateMachineBox", BindingFlags.NonPublic) is { } common)
            {
                PrepareMembers(common.MakeGenericType(result));
            }

            PrepareMembers(typeof(System.Threading.Tasks.Sources.ManualResetValueTaskSourceCore<>).MakeGenericType(result));
        }
    }

    /// <summary>The builder, and the builders it delegates to (the non-generic ones use the generic one over VoidTaskResult).</summary>
    private static IEnumerable<Type> BuildersBehind(Type builder)
    {
        yield return builder;
        if (typeof(AsyncTaskMethodBuilder).Assembly.GetType("System.Runtime.CompilerServices.AsyncMethodBuilderCore") is { } core)
        {
            yield return core;
        }

        Type? result = builder.IsGenericType ? builder.GetGenericArguments()[0] : VoidResult;
        if (builder == typeof(AsyncTaskMethodBuilder) || builder == typeof(AsyncValueTaskMethodBuilder) ||
            (builder.IsGenericType && builder.GetGenericTypeDefinition() == typeof(AsyncValueTaskMethodBuilder<>)))
        {
            yield return typeof(AsyncTaskMethodBuilder<>).MakeGenericType(result);
        }
        else if (builder == typeof(PoolingAsyncValueTaskMethodBuilder))
        {
            yield return typeof(PoolingAsyncValueTaskMethodBuilder<>).MakeGenericType(VoidResult);
        }
    }

    private static IEnumerable<Type> BoxesFor(Type builder, Type stateMachine)
    {
        foreach (Type each in BuildersBehind(builder))
        {
            if (!each.IsGenericType)
            {
                continue;
            }

            Type definition = each.GetGenericTypeDefinition();
            string? name = definition == typeof(AsyncTaskMethodBuilder<>) ? "AsyncStateMachineBox`1"
                : definition == typeof(PoolingAsyncValueTaskMethodBuilder<>) ? "StateMachineBox`1"
                : null;
            if (name is not null && definition.GetNestedType(name, BindingFlags.NonPublic) is { } box)
            {
                yield return box.MakeGenericType(each.GetGenericArguments()[0], stateMachine);
            }
        }
    }

    /// <summary>The builder's generic methods over the state machine (Start, GetStateMachineBox) and over an awaiter and the state machine (AwaitUnsafeOnCompleted, AwaitOnCompleted).</summary>
    private static void PrepareGenericMethods(Type builder, Type stateMachine, Type[] awaiters)
    {
        foreach (MethodInfo method in builder.GetMethods(All))
        {
            if (!method.IsGenericMethodDefinition)
            {
                continue;
            }

            if (method.Name is not ("Start" or "GetStateMachineBox" or "AwaitUnsafeOnCompleted"))
            {
                // AwaitOnCompleted: the compiler calls it only for awaiters that are not
                // ICriticalNotifyCompletion, which Modular's awaits never are.
                continue;
            }

            Type[] parameters = method.GetGenericArguments();
            if (parameters.Length == 1)
            {
                // Start<TStateMachine>, GetStateMachineBox<TStateMachine>, or the static
                // AwaitUnsafeOnCompleted<TAwaiter>(ref TAwaiter, IAsyncStateMachineBox) behind the
                // instance one: whichever the constraints accept.
                TryPrepare(method, [stateMachine]);
                foreach (Type awaiter in awaiters)
                {
                    TryPrepare(method, [awaiter]);
                }
            }
            else if (parameters.Length == 2)
            {
                foreach (Type awaiter in awaiters)
                {
                    TryPrepare(method, [awaiter, stateMachine]);
                }
            }
        }
    }

    private static void PrepareMembers(Type type, params string[] only)
    {
        foreach (MethodBase method in type.GetMethods(All).Cast<MethodBase>().Concat(type.GetConstructors(All)))
        {
            if (!method.IsAbstract && !method.ContainsGenericParameters && (only.Length == 0 || only.Contains(method.Name)))
            {
                TryPrepare(method);
            }
        }

        if (type.TypeInitializer is { } initializer)
        {
            TryPrepare(initializer);
        }
    }

    private static void TryPrepare(MethodInfo definition, Type[] arguments)
    {
        MethodInfo method;
        try
        {
            method = definition.MakeGenericMethod(arguments);
        }
        catch (ArgumentException)
        {
            // A constraint the arguments do not meet (an awaiter that is not an ICriticalNotifyCompletion, say).
            return;
        }

        TryPrepare(method);
    }

    /// <summary>
    /// Compiles <paramref name="method"/> (or binds its ReadyToRun code) without running it; a method
    /// that cannot be prepared on its own is left to its first use, as without the warm-up.
    /// </summary>
    /// <remarks>
    /// <see cref="RuntimeHelpers.PrepareMethod(RuntimeMethodHandle)"/> alone does nothing for a method
    /// the runtime has not yet given an entry point (.NET 10 makes them lazily): measured, the
    /// parameterless MoveNext of an async method's box, which runs each time the method resumes
    /// inline, was still compiled at the first resume, on the postcopy preempt channel's thread
    /// while the guest's first requested page waited. Asking for the function pointer first gives
    /// the method its entry point, and then it is compiled here.
    /// </remarks>
    internal static void TryPrepare(MethodBase method)
    {
        try
        {
            _ = method.MethodHandle.GetFunctionPointer();
            RuntimeHelpers.PrepareMethod(method.MethodHandle);
        }
        catch (Exception ex) when (ex is ArgumentException or NotSupportedException or TypeLoadException or BadImageFormatException or InvalidProgramException or InvalidOperationException or MissingMethodException)
        {
            // Compiled on first use instead, as without the warm-up.
        }
    }
}
