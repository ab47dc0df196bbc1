// Writes numbers.txt: doubles as 16 hex digits of their IEEE 754 bits, a
// space, and the form ECMAScript gives them (Number.prototype.toString, which
// JSON.stringify and RFC 8785 use). Run with node; a fixed seed keeps the file
// the same on every run.
import { writeFileSync } from "node:fs";

let state = 0x2545f4914f6cdd1dn;
const next = () => {
  // xorshift64*
  state ^= state >> 12n;
  state ^= (state << 25n) & 0xffffffffffffffffn;
  state ^= state >> 27n;
  return (state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
};
const view = new DataView(new ArrayBuffer(8));
const lines = [];
const add = (bits) => {
  view.setBigUint64(0, bits);
  const value = view.getFloat64(0);
  if (Number.isFinite(value)) {
    lines.push(`${bits.toString(16).padStart(16, "0")} ${JSON.stringify(value)}`);
  }
};
for (let i = 0; i < 1000; i++) {
  const bits = next();
  add(bits);
  // Also numbers near the ones people write: small integers, decimals, and
  // the edges where ECMAScript switches to exponent form (1e21, 1e-7).
  view.setFloat64(0, Number(bits % 100000n) / [1, 10, 100, 1000, 1e7, 1e-21][i % 6]);
  add(view.getBigUint64(0));
}
writeFileSync(new URL("numbers.txt", import.meta.url), lines.join("\n") + "\n");
