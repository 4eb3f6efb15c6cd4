/**
 * Name tables derived from their numeric enums (`as const` objects), so that a
 * name can never sit at another index than its code (passt keeps the same
 * promise with static_assert(ARRAY_SIZE(names) == N)).
 */

/**
 * The names of a numeric enum, indexed by value, in lower case:
 * `{ FREE: 0, SYN_SENT: 1 }` → `['free', 'syn_sent']`. Throws at module load when
 * the values are not exactly 0..n-1 (a gap or a duplicate is a programming error).
 */
export function enumNames(e: Readonly<Record<string, number>>): readonly string[] {
  const entries = Object.entries(e);
  const names: string[] = new Array(entries.length);
  for (const [key, value] of entries) {
    if (
      !Number.isInteger(value) ||
      value < 0 ||
      value >= entries.length ||
      names[value] !== undefined
    )
      throw new Error(
        `enum value ${key} = ${value} is not a unique index in 0..${entries.length - 1}`,
      );
    names[value] = key.toLowerCase();
  }
  return Object.freeze(names);
}
