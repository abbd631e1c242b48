/** commander argParser of a repeatable option: each occurrence appends its value. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
