#!/usr/bin/env python3
"""Proves scripts/check-module-graph can fail: it runs the real script on small trees made here,
with a cycle planted (it must exit 1 and name the files) and without (it must exit 0).

    python3 scripts/check_module_graph_test.py
"""

import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check-module-graph")


def run(files):
    """Writes `files` ({path: text}) into a temp workspace and runs the checker on it."""
    with tempfile.TemporaryDirectory() as root:
        for path, text in files.items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)
        done = subprocess.run(
            [sys.executable, SCRIPT, root], capture_output=True, text=True, timeout=60
        )
        return done.returncode, done.stderr


def krate(name, files):
    out = {f"{name}/Cargo.toml": f'[package]\nname = "{name}"\n'}
    out.update({f"{name}/src/{p}": t for p, t in files.items()})
    return out


class CheckModuleGraph(unittest.TestCase):
    def test_a_planted_cycle_between_siblings_fails_naming_the_files(self):
        code, err = run(krate("c", {
            "lib.rs": "mod a;\nmod b;\nmod c;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "use crate::{c::C, a as x};\npub struct B;\n",
            "c.rs": "pub struct C(super::a::A);\n",
        }))
        self.assertEqual(code, 1, err)
        self.assertIn("module cycle in c: c/src/a.rs (line 1: crate::b::B) -> c/src/b.rs", err)

    def test_a_child_using_its_parent_and_test_code_are_no_cycle(self):
        code, err = run(krate("c", {
            "lib.rs": "pub mod session;\npub mod exec;\npub use session::Session;\n",
            # Each of the comment, the string and the test module would close a cycle with
            # exec.rs if it counted.
            "session.rs": "mod login;\nuse login::Login; // crate::exec::x in a comment\n"
                          'pub struct Session;\nconst S: &str = "crate::exec";\n'
                          "#[cfg(test)]\nmod tests {\n    use crate::exec::*;\n}\n",
            "session/login.rs": "use super::Session;\npub struct Login;\n",
            "exec.rs": "use crate::Session;\n",
        }))
        self.assertEqual(code, 0, err)

    def test_a_reexport_is_followed_to_the_module_that_defines_it(self):
        code, err = run(krate("c", {
            "lib.rs": "mod error;\nmod version;\npub use error::Error;\n",
            "error.rs": "pub enum Error { V(crate::version::Version) }\n",
            "version.rs": "use crate::Error;\npub struct Version;\n",
        }))
        self.assertEqual(code, 1, err)
        self.assertIn("c/src/error.rs", err)
        self.assertIn("c/src/version.rs (line 1: crate::Error)", err)

    def test_the_tunnels_layering_rule_fails_without_a_cycle(self):
        code, err = run(krate("borg-pull-tunnel", {
            "lib.rs": "pub mod ssh;\npub mod jobs;\n",
            "ssh/mod.rs": "pub mod session;\n",
            "ssh/session.rs": "pub fn f() { crate::jobs::pull::g() }\n",
            "jobs/mod.rs": "pub mod pull;\n",
            "jobs/pull.rs": "pub fn g() {}\n",
        }))
        self.assertEqual(code, 1, err)
        self.assertIn("ssh/ must not import jobs/", err)
        self.assertIn("borg-pull-tunnel/src/ssh/session.rs (line 1: crate::jobs::pull::g)", err)

    def test_a_known_cycle_is_a_note_until_it_grows(self):
        cycle = {
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "use crate::a::A;\npub struct B;\n",
        }
        known = {"scripts/module-cycles.known": "c: src/a.rs src/b.rs\n"}
        code, err = run({**krate("c", cycle), **known})
        self.assertEqual(code, 0, err)
        self.assertIn("known module cycle in c", err)
        grown = dict(cycle, **{"lib.rs": "mod a;\nmod b;\nmod d;\n", "d.rs": "use crate::a::A;\n",
                               "a.rs": "use crate::{b::B, d};\npub struct A;\n"})
        code, err = run({**krate("c", grown), **known})
        self.assertEqual(code, 1, err)


if __name__ == "__main__":
    unittest.main()
