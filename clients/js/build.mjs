// Copies the client and its types from gateway/static/, their one source, into this directory for `npm pack` and
// `npm publish` (the prepack script); `--clean` removes the copies again (postpack), so the tree never holds two.
// A symlink would not do: npm leaves symlinks out of the tarball.
import { copyFileSync, rmSync } from "node:fs";

const FILES = ["session-client.js", "session-client.d.ts"];
const source = new URL("../../gateway/static/", import.meta.url);
const here = new URL("./", import.meta.url);

for (const name of FILES) {
  if (process.argv.includes("--clean")) rmSync(new URL(name, here), { force: true });
  else copyFileSync(new URL(name, source), new URL(name, here));
}
