// Command-line parsing shared by interop.mjs and c2c.mjs (no dependencies: `--list` and
// `--help` work before `npm ci`).

// Parse `--name value` and `--flag` arguments into an object (camelCase keys).
export function parseArgs(argv, flags = []) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { out._.push(a); continue; }
    const [rawName, inline] = a.slice(2).split(/=(.*)/s, 2);
    const name = rawName.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (flags.includes(rawName)) { out[name] = true; continue; }
    const value = inline !== undefined ? inline : argv[++i];
    if (value === undefined) throw new Error(`--${rawName} needs a value`);
    out[name] = value;
  }
  return out;
}
