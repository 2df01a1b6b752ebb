/**
 * The span of a public call on the hot path (`execute`, `query`): the same span `Effect.withSpan` makes
 * (name, attributes, parent, the fiber's span annotations and links, timing), for a fraction of its cost.
 * `withSpan` also makes the span the parent of everything the call runs, which copies the fiber's context on
 * every call; a statement runs no traced work of its own, so work it sets off (a WAL fold) is traced beside
 * it, under the caller's span. With the tracer disabled, or with Effect's default tracer (whose spans
 * nothing records or exports: an application that traces installs its own), no span is made: a fiber-ref
 * read and a comparison.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"

/** The caller's span, skipping spans that disable propagation (as `withSpan` does). */
const parentOf = (span: Option.Option<Tracer.AnySpan>): Option.Option<Tracer.AnySpan> =>
  Option.flatMap(span, (s) =>
    Context.getOrElse(s.context, Tracer.DisablePropagation, () => false)
      ? s._tag === "Span" ? parentOf(s.parent) : Option.none()
      : Option.some(s))

/** Effect's default tracer, as every fiber has it unless a tracer is provided. */
const defaultTracer = Effect.runSync(Effect.tracer)

/** @internal */
export const around = (name: string, attributes: Readonly<Record<string, unknown>>) =>
<A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime<A, E, R>((fiber) => {
    if (!fiber.getFiberRef(FiberRef.currentTracerEnabled) || fiber.currentTracer === defaultTracer) return self
    const context = fiber.currentContext
    const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
    const timing = fiber.getFiberRef(FiberRef.currentTracerTimingEnabled)
    const span = fiber.currentTracer.span(
      name,
      parentOf(Context.getOption(context, Tracer.ParentSpan)),
      Context.empty(),
      fiber.getFiberRef(FiberRef.currentTracerSpanLinks).pipe((links) => Array.from(links)),
      timing ? clock.unsafeCurrentTimeNanos() : BigInt(0),
      "internal"
    )
    const annotations = fiber.getFiberRef(FiberRef.currentTracerSpanAnnotations)
    if (HashMap.size(annotations) > 0) HashMap.forEach(annotations, (value, key) => span.attribute(key, value))
    for (const key in attributes) span.attribute(key, attributes[key])
    return Effect.onExit(self, (exit) =>
      Effect.sync(() => {
        if (span.status._tag === "Started") span.end(timing ? clock.unsafeCurrentTimeNanos() : BigInt(0), exit)
      }))
  })
