// One colour per model on every chart and page: picked from the model's name,
// so it does not move when the set of models in view changes.
const PALETTE = [
  '#5470c6', '#91cc75', '#fac858', '#ee6666', '#73c0de', '#3ba272',
  '#fc8452', '#9a60b4', '#ea7ccc', '#2f4554', '#b6a2de', '#d87a80',
]

export function colorOf(name: string): string {
  // FNV-1a: cheap and well spread for short names.
  let h = 0x811c9dc5
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return PALETTE[(h >>> 0) % PALETTE.length]
}
