#!/usr/bin/env node
// shellper-main.js: drop-in replacement for codev's dist/terminal/shellper-main.js
// that runs the native `shellper` (leased, self-terminating; see README.md,
// "Using it under an unmodified codev Tower").
// @shellper-shim (this marker tells `leasectl codev status` the file is ours)
//
// Installed by `leasectl codev install`, which keeps codev's own script beside
// it as shellper-main.orig.js (and `leasectl codev uninstall` puts it back).
//
// codev's Tower starts `node <this file> <json-config>` and then checks the
// process it started by pid and start time. This file replaces the Node
// process with the shellper binary through process.execve (Node >= 22.15):
// same pid, same start time, same stdio (info line on stdout, stderr to the
// session's log), and "shellper-main.js" stays in the process's argv so
// codev's `ps`-based sweeps still recognise it. The shellper ignores every
// argument before the JSON config.
//
// Where the binary is looked up, in order:
//   1. $SHELLPER_BIN (an absolute path);
//   2. a file named `shellper` next to this script;
//   3. `shellper` on $PATH.
//
// On a platform the shellper does not support (it is Linux only; codev also
// runs on macOS), the session is handed to codev's original script, the
// backup shellper-main.orig.js next to this file, in this same process, and
// the session's log says so in one line.
//
// Deliberately no static import/require: this file runs unchanged as an ES
// module (codev's package is "type": "module") or as CommonJS.
'use strict';

const BACKUP = 'shellper-main.orig.js';

/** One line on stderr, which codev sends to the session's log. */
function log(message) {
  try {
    process.stderr.write(`[${new Date().toISOString()}] shellper-main.js: ${message}\n`);
  } catch {
    // stderr gone: nothing else to tell.
  }
}

function fail(message) {
  log(message);
  process.exit(1);
}

if (process.platform !== 'linux') {
  // Dynamic import works in both module systems and on any Node codev runs
  // on (no process.getBuiltinModule needed). The original reads its config
  // from process.argv[2], which is unchanged, and imports its siblings
  // relative to its own URL, which is this directory.
  const script = process.argv[1] || '';
  const dir = script.slice(0, script.lastIndexOf('/') + 1);
  const original = dir + BACKUP;
  log(
    `the native shellper does not run on ${process.platform}: ` +
      `running codev's original shellper (${original}) instead`,
  );
  import('node:url')
    .then((url) => import(url.pathToFileURL(original).href))
    .catch((err) =>
      fail(
        `cannot run codev's original shellper ${original}: ${err && err.message ? err.message : err} ` +
          '(reinstall codev: npm install -g @cluesmith/codev)',
      ),
    );
} else {
  runNative();
}

/** Linux: replace this process with the native shellper. */
function runNative() {
  if (typeof process.execve !== 'function' || typeof process.getBuiltinModule !== 'function') {
    fail(
      `Node ${process.version} has no process.execve (needs Node 22.15 or later), ` +
        'so it cannot hand this session to the native shellper. Run codev with Node >= 22.15, ' +
        'or put codev\'s own script back (leasectl codev uninstall).',
    );
  }

  const fs = process.getBuiltinModule('node:fs');
  const path = process.getBuiltinModule('node:path');

  function executable(file) {
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return fs.statSync(file).isFile();
    } catch {
      return false;
    }
  }

  function findShellper(script) {
    const fromEnv = process.env.SHELLPER_BIN;
    if (fromEnv) {
      if (!executable(fromEnv)) fail(`SHELLPER_BIN=${fromEnv} is not an executable file`);
      return fromEnv;
    }
    const beside = path.join(path.dirname(fs.realpathSync(script)), 'shellper');
    if (executable(beside)) return beside;
    for (const dir of (process.env.PATH || '').split(path.delimiter)) {
      if (!dir) continue;
      const candidate = path.join(dir, 'shellper');
      if (executable(candidate)) return candidate;
    }
    return fail(`no shellper binary: set SHELLPER_BIN, put it next to ${script}, or on PATH`);
  }

  const script = process.argv[1];
  const bin = findShellper(script);
  try {
    // argv: the binary, this script (for codev's ps sweeps; ignored by the
    // shellper), then codev's arguments, the JSON config last.
    process.execve(bin, [bin, script, ...process.argv.slice(2)], process.env);
  } catch (err) {
    fail(`cannot exec ${bin}: ${err && err.message ? err.message : err}`);
  }
}
