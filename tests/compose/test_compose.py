"""Checks of compose.yaml, without a Docker engine.

    .parley/venv/bin/python -m unittest discover -s tests/compose -v     (scripts/test.sh runs it)

- compose.yaml validates against the Compose Specification's JSON Schema, read from
  ../shared/schemas/compose-spec.json beside the checkout (never copied into the repo), both as
  written and after variable interpolation with every default applied;
- every environment variable a service's code reads is set or defaulted for that service: the
  variables are found by scanning the Rust sources of the service's crate and of every workspace
  library it depends on (transitively, from the Cargo.toml files), for `config::required("…")`,
  `config::optional("…")`, `config::or_default("…")`, `config::parsed("…"`, `env::var("…")`,
  clap's `env = "…"`, and the logging variables `PARLEY_LOG_FORMAT` and `RUST_LOG`
  (`EnvFilter::from_default_env` reads `RUST_LOG`);
- the services meant to be scaled have no container_name and publish no fixed host port;
- what compose.yaml, the Dockerfile, deploy/nginx.conf, nats/ and scripts/lib.sh each assume of
  the others agrees (ports, binary names, the NATS version, files mounted), and .env.example
  lists every variable.

Environment: PARLEY_COMPOSE_FILE (default: compose.yaml at the repo root) and
PARLEY_COMPOSE_SCHEMA (default: ../shared/schemas/compose-spec.json from the repo root).
Needs jsonschema and PyYAML (scripts/lib.sh `parley_ensure_py_test_deps` installs the pinned
versions into .parley/venv).
"""

from __future__ import annotations

import copy
import json
import os
import re
import unittest
from dataclasses import dataclass, field
from pathlib import Path

try:
    import jsonschema
    import yaml
except ImportError as error:  # pragma: no cover - a setup problem, said plainly
    raise ImportError(
        f"{error}: tests/compose needs jsonschema and PyYAML; run it with scripts/test.sh, or "
        "`source scripts/lib.sh && parley_ensure_py_test_deps` and use $PARLEY_TEST_PY"
    ) from error

try:
    import tomllib
except ImportError:  # Python < 3.11: fall back to the regular expressions below.
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = Path(os.environ.get("PARLEY_COMPOSE_FILE") or ROOT / "compose.yaml")
SCHEMA_FILE = Path(
    os.environ.get("PARLEY_COMPOSE_SCHEMA") or ROOT.parent / "shared" / "schemas" / "compose-spec.json"
)

# The crate behind each compose service that runs our code.
SERVICE_CRATES = {
    "gateway": "services/gateway",
    "persistence-worker": "services/persistence-worker",
    "notification-worker": "services/notification-worker",
    "cli": "services/cli",
}
# `docker compose up --scale` must work for these.
SCALED_SERVICES = ("gateway", "persistence-worker", "notification-worker")
# What the scan must find at the very least; fewer means the patterns no longer match the code.
AT_LEAST = {
    "gateway": {"NATS_URL", "DATABASE_URL", "PARLEY_JWT_SECRET", "PARLEY_LOG_FORMAT", "RUST_LOG"},
    "persistence-worker": {"NATS_URL", "DATABASE_URL", "PARLEY_LOG_FORMAT", "RUST_LOG"},
    "notification-worker": {"NATS_URL", "PARLEY_LOG_FORMAT", "RUST_LOG"},
    "cli": {"NATS_URL"},
}


# ---------------------------------------------------------------- loading


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)  # resolves anchors and `<<` merge keys, as compose does
    if not isinstance(doc, dict):
        raise AssertionError(f"{path}: not a YAML mapping")
    return doc


def load_schema() -> dict:
    if not SCHEMA_FILE.is_file():
        raise AssertionError(
            f"Compose Specification schema not found at {SCHEMA_FILE} (expected beside the checkout, "
            "as in CI); set PARLEY_COMPOSE_SCHEMA to its path"
        )
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


def schema_errors(doc: dict, schema: dict) -> list[str]:
    """Every schema violation in doc, one readable line each (the schema is draft-07)."""
    validator = jsonschema.Draft7Validator(schema)
    lines = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        lines.append(f"  at {where}: {error.message}")
        # `oneOf` failures say little by themselves: add the closest reason underneath.
        for sub in sorted(error.context or [], key=lambda e: len(e.absolute_path))[:1]:
            lines.append(f"      ({sub.message})")
    return lines


# ---------------------------------------------------------------- compose interpolation


class MissingRequired(Exception):
    """A `${VAR:?message}` (or `${VAR?message}`) whose variable is unset."""


@dataclass
class Ref:
    name: str
    op: str  # "", ":-", "-", ":?", "?", ":+", "+"
    arg: list = field(default_factory=list)  # tokens: str | Ref


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_template(text: str) -> list:
    """Compose's interpolation syntax: $$, $VAR, ${VAR}, ${VAR<op>arg} with nesting in arg."""
    tokens, _ = _parse(text, 0, inside_braces=False)
    return tokens


def _parse(text: str, i: int, inside_braces: bool):
    tokens: list = []
    literal = []
    while i < len(text):
        c = text[i]
        if inside_braces and c == "}":
            break
        if c != "$":
            literal.append(c)
            i += 1
            continue
        if text.startswith("$$", i):
            literal.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            m = _NAME.match(text, i + 2)
            if not m:
                raise ValueError(f"invalid interpolation at {text[i:]!r} (use $$ for a literal $)")
            name, j = m.group(0), m.end()
            op = ""
            for candidate in (":-", ":?", ":+", "-", "?", "+"):
                if text.startswith(candidate, j):
                    op = candidate
                    j += len(candidate)
                    break
            arg, j = _parse(text, j, inside_braces=True) if op else ([], j)
            if j >= len(text) or text[j] != "}":
                raise ValueError(f"unterminated ${{…}} in {text!r}")
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append(Ref(name, op, arg))
            i = j + 1
            continue
        m = _NAME.match(text, i + 1)
        if m:
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append(Ref(m.group(0), ""))
            i = m.end()
            continue
        literal.append("$")
        i += 1
    if literal:
        tokens.append("".join(literal))
    return tokens, i


def evaluate(tokens: list, env: dict) -> str:
    out = []
    for t in tokens:
        if isinstance(t, str):
            out.append(t)
            continue
        value = env.get(t.name)
        is_set, non_empty = value is not None, bool(value)
        if t.op == "":
            out.append(value or "")
        elif t.op in (":-", "-"):
            use_value = non_empty if t.op == ":-" else is_set
            out.append(value if use_value else evaluate(t.arg, env))
        elif t.op in (":?", "?"):
            if not (non_empty if t.op == ":?" else is_set):
                raise MissingRequired(f"{t.name}: {evaluate(t.arg, env)}")
            out.append(value)
        else:  # ":+", "+"
            use_arg = non_empty if t.op == ":+" else is_set
            out.append(evaluate(t.arg, env) if use_arg else "")
    return "".join(out)


def interpolate(text: str, env: dict) -> str:
    return evaluate(parse_template(text), env)


def refs(tokens: list):
    """Every variable reference, nested ones included."""
    for t in tokens:
        if isinstance(t, Ref):
            yield t
            yield from refs(t.arg)


def undefaulted(tokens: list) -> list[str]:
    """References that leave the value empty when their variable is unset (no default, no `?`)."""
    bad = []
    for t in tokens:
        if not isinstance(t, Ref):
            continue
        if t.op in ("", ":+", "+"):
            bad.append(t.name)
        if t.op in (":-", "-"):
            bad.extend(undefaulted(t.arg))
    return bad


def interpolate_document(node, env: dict):
    """Interpolates every string value (not keys), as compose does before using the file."""
    if isinstance(node, dict):
        return {k: interpolate_document(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_document(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def all_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_strings(v)
    elif isinstance(node, str):
        yield node


def required_variables(doc: dict) -> set[str]:
    """Variables the file itself requires with `${VAR:?…}`."""
    return {r.name for s in all_strings(doc) for r in refs(parse_template(s)) if r.op in (":?", "?")}


def environment_of(service: dict) -> dict:
    """A service's `environment` as a dict; None marks a variable passed through from the host."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, sep, value = item.partition("=")
            out[key] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


# ---------------------------------------------------------------- reading the Rust sources


def _read_toml(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if tomllib is not None:
        return tomllib.loads(text)
    # Minimal fallback: dependency names and paths, the package's and bins' names.
    deps, section, ws, package, bins = {}, None, {}, {}, []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s.strip("[]").strip()
            if s.startswith("[[bin]]"):
                bins.append({})
            continue
        m = re.match(r'^([A-Za-z0-9_-]+)(?:\.workspace)?\s*=\s*(.*)$', s)
        if not m:
            continue
        name_value = re.fullmatch(r'"([^"]*)"', m.group(2).strip())
        if section in ("package", "bin") and m.group(1) == "name" and name_value:
            (package if section == "package" else bins[-1])["name"] = name_value.group(1)
        elif section == "dependencies":
            deps[m.group(1)] = {}
            pm = re.search(r'path\s*=\s*"([^"]+)"', m.group(2))
            if pm:
                deps[m.group(1)] = {"path": pm.group(1)}
        elif section == "workspace.dependencies":
            pm = re.search(r'path\s*=\s*"([^"]+)"', m.group(2))
            if pm:
                ws[m.group(1)] = {"path": pm.group(1)}
    return {"package": package, "bin": bins, "dependencies": deps, "workspace": {"dependencies": ws}}


def workspace_crate_dirs(crate_dir: str) -> list[str]:
    """crate_dir and every workspace crate it depends on (normal dependencies, transitively)."""
    root_manifest = _read_toml(ROOT / "Cargo.toml")
    by_name = {
        name: spec["path"]
        for name, spec in root_manifest.get("workspace", {}).get("dependencies", {}).items()
        if isinstance(spec, dict) and "path" in spec
    }
    seen, todo = [], [crate_dir]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        manifest = _read_toml(ROOT / current / "Cargo.toml")
        for name, spec in manifest.get("dependencies", {}).items():
            path = None
            if isinstance(spec, dict) and "path" in spec:
                path = os.path.normpath(os.path.join(current, spec["path"]))
            elif name in by_name:
                path = os.path.normpath(by_name[name])
            if path and (ROOT / path / "Cargo.toml").is_file():
                todo.append(path)
    return seen


_LINE_COMMENT = re.compile(r"^\s*//.*$", re.MULTILINE)
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_CONFIG_READ = re.compile(
    r"\b(?:config::)?(required|optional|or_default|parsed)\s*(?:::\s*<[^>()]*>)?\s*\(\s*\"([A-Z][A-Z0-9_]*)\""
)
_ENV_VAR = re.compile(r"\benv::var(?:_os)?\s*\(\s*\"([A-Z][A-Z0-9_]*)\"")
_CLAP_ENV = re.compile(r"\benv\s*=\s*\"([A-Z][A-Z0-9_]*)\"")
_LOG_LITERAL = re.compile(r"\"(PARLEY_LOG_FORMAT|RUST_LOG)\"")
_RUST_LOG_DEFAULT = re.compile(r"\b(?:try_)?from_default_env\b")


@dataclass
class Read:
    variable: str
    required: bool
    where: str  # file:line of the first read


def variables_read(crate_dir: str) -> dict[str, Read]:
    """Environment variables read by the code of crate_dir and its workspace dependencies."""
    found: dict[str, Read] = {}

    def note(variable: str, required: bool, path: Path, text: str, pos: int):
        line = text.count("\n", 0, pos) + 1
        where = f"{path.relative_to(ROOT)}:{line}"
        if variable in found:
            found[variable].required |= required
        else:
            found[variable] = Read(variable, required, where)

    for crate in workspace_crate_dirs(crate_dir):
        for path in sorted((ROOT / crate / "src").rglob("*.rs")):
            raw = path.read_text(encoding="utf-8")
            # Blank out comments, keeping offsets (and so line numbers) intact.
            text = _BLOCK_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), raw)
            text = _LINE_COMMENT.sub(lambda m: " " * len(m.group(0)), text)
            for m in _CONFIG_READ.finditer(text):
                note(m.group(2), m.group(1) == "required", path, text, m.start())
            for pattern in (_ENV_VAR, _CLAP_ENV, _LOG_LITERAL):
                for m in pattern.finditer(text):
                    note(m.group(1), False, path, text, m.start())
            for m in _RUST_LOG_DEFAULT.finditer(text):
                note("RUST_LOG", False, path, text, m.start())
    return found


def binaries_of_workspace() -> set[str]:
    names = set()
    for manifest_path in sorted((ROOT / "services").glob("*/Cargo.toml")):
        manifest = _read_toml(manifest_path)
        bins = [b["name"] for b in manifest.get("bin", []) if "name" in b]
        if not bins and (manifest_path.parent / "src" / "main.rs").is_file():
            bins = [manifest.get("package", {}).get("name", manifest_path.parent.name)]
        names.update(bins)
    return names


def port_of(address: str) -> str:
    return address.rsplit(":", 1)[-1]


def host_file(source: str) -> Path:
    return (COMPOSE_FILE.parent / source).resolve()


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount given in short syntax with ./ or ../."""
    out = []
    for volume in service.get("volumes", []) or []:
        if isinstance(volume, str) and volume.startswith((".", "/")):
            parts = volume.split(":")
            out.append((parts[0], parts[1]))
        elif isinstance(volume, dict) and volume.get("type") == "bind":
            out.append((volume["source"], volume["target"]))
    return out


# ---------------------------------------------------------------- the tests


class ComposeFile(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.doc = load_compose()
        cls.schema = load_schema()
        cls.services = cls.doc.get("services") or {}
        # Defaults applied; what the file requires with `:?` set to a placeholder.
        cls.defaults_env = {name: "placeholder-0123456789abcdef0123456789" for name in required_variables(cls.doc)}
        cls.resolved = interpolate_document(cls.doc, cls.defaults_env)

    def read_mounted(self, source: str) -> str:
        path = host_file(source)
        self.assertTrue(path.is_file(), f"{source} (bind-mounted by compose.yaml) does not exist at {path}")
        return path.read_text(encoding="utf-8")

    # -- schema

    def test_validates_against_the_compose_schema(self):
        errors = schema_errors(self.doc, self.schema)
        self.assertFalse(
            errors, f"{COMPOSE_FILE} does not validate against {SCHEMA_FILE}:\n" + "\n".join(errors)
        )

    def test_validates_after_interpolation(self):
        errors = schema_errors(self.resolved, self.schema)
        self.assertFalse(
            errors,
            f"{COMPOSE_FILE}, with every ${{VAR:-default}} applied, does not validate against "
            f"{SCHEMA_FILE}:\n" + "\n".join(errors),
        )

    def test_the_schema_check_catches_mistakes(self):
        """Guards the guard: a schema or loader that accepts anything would pass the tests above."""
        for label, mutate in (
            ("an unknown top-level key", lambda d: d.__setitem__("servicez", {})),
            ("an unknown service key", lambda d: d["services"]["gateway"].__setitem__("replicaz", 2)),
            ("a mistyped restart policy", lambda d: d["services"]["gateway"].__setitem__("restart", False)),
        ):
            broken = copy.deepcopy(self.doc)
            mutate(broken)
            with self.subTest(label):
                self.assertTrue(schema_errors(broken, self.schema), f"the schema accepted {label}")

    # -- environment

    def test_every_variable_a_service_reads_is_set_or_defaulted(self):
        problems = []
        for service_name, crate in SERVICE_CRATES.items():
            service = self.services.get(service_name)
            if service is None:
                problems.append(f"{service_name}: no such service in compose.yaml (runs {crate})")
                continue
            reads = variables_read(crate)
            blind = AT_LEAST[service_name] - reads.keys()
            if blind:
                problems.append(
                    f"{service_name}: the scan of {crate} found no read of {sorted(blind)}; the code reads "
                    "configuration in a way tests/compose/test_compose.py does not recognise: update it"
                )
            env = environment_of(service)
            for name, read in sorted(reads.items()):
                origin = f"(read at {read.where})"
                if name not in env:
                    problems.append(f"{service_name}: {name} is not set in its environment {origin}")
                    continue
                value = env[name]
                if value is None:
                    problems.append(
                        f"{service_name}: {name} has no value, so it comes from the host's environment "
                        f"or not at all; give it a value or ${{{name}:-default}} {origin}"
                    )
                    continue
                tokens = parse_template(value)
                loose = undefaulted(tokens)
                if loose:
                    problems.append(
                        f"{service_name}: {name}={value!r} leaves {sorted(set(loose))} without a default "
                        f"(write ${{VAR:-default}}, or ${{VAR:?message}} when it must be given) {origin}"
                    )
                    continue
                if read.required:
                    try:
                        resolved = evaluate(tokens, {})
                    except MissingRequired:
                        continue  # ${VAR:?…}: compose refuses to start without it. Good.
                    if not resolved:
                        problems.append(
                            f"{service_name}: {name} is required by the service but defaults to empty "
                            f"{origin}"
                        )
        self.assertFalse(problems, "environment problems in compose.yaml:\n  " + "\n  ".join(problems))

    def test_env_example_lists_every_variable(self):
        example = ROOT / ".env.example"
        self.assertTrue(example.is_file(), ".env.example is missing at the repo root")
        listed = set(re.findall(r"^[ \t]*#?[ \t]*([A-Z][A-Z0-9_]*)=", example.read_text(encoding="utf-8"), re.M))
        wanted = {r.name for s in all_strings(self.doc) for r in refs(parse_template(s))}
        for service_name, crate in SERVICE_CRATES.items():
            if service_name in self.services:
                wanted |= set(variables_read(crate))
        missing = sorted(wanted - listed)
        self.assertFalse(missing, f".env.example does not list {missing}")

    # -- scaling

    def test_scaled_services_have_no_fixed_name_or_host_port(self):
        problems = []
        for name in SCALED_SERVICES:
            service = self.resolved["services"].get(name)
            if service is None:
                problems.append(f"{name}: no such service")
                continue
            if "container_name" in service:
                problems.append(f"{name}: container_name {service['container_name']!r} allows one container only")
            if "hostname" in service:
                problems.append(f"{name}: a fixed hostname gives every replica the same name")
            for port in service.get("ports", []) or []:
                if isinstance(port, dict):
                    published = port.get("published")
                else:
                    spec = str(port).split("/")[0]
                    published = spec.rsplit(":", 1)[0] if ":" in spec else None
                if published not in (None, ""):
                    problems.append(f"{name}: port {port!r} publishes a host port, which only one replica can bind")
        self.assertFalse(problems, "services meant to scale cannot:\n  " + "\n  ".join(problems))

    # -- agreement with the Dockerfile, nginx, nats/ and scripts/

    def test_commands_are_binaries_the_image_builds(self):
        dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        built = set(re.findall(r"--bin\s+([A-Za-z0-9_-]+)", dockerfile))
        self.assertTrue(built, "the Dockerfile builds no --bin")
        unknown = built - binaries_of_workspace()
        self.assertFalse(unknown, f"the Dockerfile builds {sorted(unknown)}, which no services/*/Cargo.toml defines")
        images = set()
        for name in SERVICE_CRATES:
            service = self.resolved["services"].get(name)
            if service is None:
                continue
            self.assertIn("build", service, f"{name}: should be built from the project's Dockerfile")
            images.add(service.get("image"))
            program = (service.get("entrypoint") or service.get("command") or [None])[0]
            self.assertIn(program, built, f"{name}: runs {program!r}, which the Dockerfile does not build")
        self.assertEqual(len(images), 1, f"the services should share one image, not {sorted(map(str, images))}")

    def test_gateway_port_agrees_with_proxy_and_health_check(self):
        gateway = self.resolved["services"]["gateway"]
        port = port_of(environment_of(gateway)["PARLEY_LISTEN"])
        self.assertIn(f"127.0.0.1:{port}/", " ".join(gateway["healthcheck"]["test"]))
        confs = [src for src, dst in bind_mounts(self.resolved["services"]["proxy"]) if dst.startswith("/etc/nginx/")]
        self.assertTrue(confs, "the proxy mounts no nginx configuration")
        text = self.read_mounted(confs[0])
        upstream = re.findall(r"^\s*server\s+gateway:(\d+)\b", text, re.M)
        self.assertEqual(upstream, [port], f"{confs[0]}: the upstream should be gateway:{port} (PARLEY_LISTEN)")

    def test_worker_admin_port_agrees_with_health_check(self):
        for name in ("persistence-worker", "notification-worker"):
            service = self.resolved["services"][name]
            listen = environment_of(service).get("PARLEY_ADMIN_LISTEN")
            self.assertTrue(listen, f"{name}: PARLEY_ADMIN_LISTEN is not set")
            self.assertFalse(listen.startswith("127."), f"{name}: an admin endpoint on loopback cannot be scraped")
            test = " ".join(service.get("healthcheck", {}).get("test", []))
            self.assertIn(f"127.0.0.1:{port_of(listen)}/", test, f"{name}: health check and admin port differ")

    def test_nats_matches_the_scripts_and_its_configs(self):
        pinned = re.search(r'^PARLEY_NATS_VERSION="([^"]+)"', (ROOT / "scripts/lib.sh").read_text(), re.M)
        self.assertIsNotNone(pinned, "scripts/lib.sh no longer sets PARLEY_NATS_VERSION")
        nats_services = {n: s for n, s in self.resolved["services"].items() if str(s.get("image", "")).startswith("nats:")}
        self.assertIn("nats", nats_services)
        for name in ("nats-1", "nats-2", "nats-3"):
            self.assertIn(name, nats_services, f"the cluster profile lacks {name}")
            self.assertEqual(nats_services[name].get("profiles"), ["cluster"], f"{name} should be in profile cluster")
        for name, service in nats_services.items():
            tag = service["image"].split(":", 1)[1]
            self.assertTrue(
                tag == pinned.group(1) or tag.startswith(pinned.group(1) + "-"),
                f"{name}: image {service['image']} is not nats-server {pinned.group(1)}, the version scripts/lib.sh pins",
            )
            command = service.get("command") or []
            config_flags = [i for i, a in enumerate(command) if a in ("-c", "--config")]
            self.assertTrue(config_flags, f"{name}: no --config in its command")
            config_path = command[config_flags[0] + 1]
            mounted = {dst: src for src, dst in bind_mounts(service)}
            self.assertIn(config_path, mounted, f"{name}: {config_path} is not mounted from nats/")
            config = self.read_mounted(mounted[config_path])
            has_store_dir = re.search(r"^\s*store_dir\s*:", config, re.M) is not None
            passes_sd = "-sd" in command or "--store_dir" in command
            # nats-server rejects both together; neither puts JetStream under /tmp, off the volume.
            self.assertNotEqual(
                has_store_dir, passes_sd,
                f"{name}: give the JetStream store exactly once (store_dir in {mounted[config_path]}: "
                f"{has_store_dir}, -sd on the command line: {passes_sd})",
            )
            volume_targets = [v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str)]
            self.assertIn("/data", volume_targets, f"{name}: JetStream's /data is not on a volume")

    def test_bind_mounted_files_exist(self):
        missing = [
            f"{name}: {src}"
            for name, service in self.resolved["services"].items()
            for src, _ in bind_mounts(service)
            if not host_file(src).exists()
        ]
        self.assertFalse(missing, f"bind mounts of missing files: {missing}")

    def test_restart_policies_are_valid(self):
        # The schema takes any string; Docker takes only these.
        valid = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
        bad = [
            f"{name}: restart {service['restart']!r}"
            for name, service in self.resolved["services"].items()
            if "restart" in service and not valid.match(str(service["restart"]))
        ]
        self.assertFalse(bad, f"invalid restart policies (no, always, unless-stopped, on-failure[:N]): {bad}")

    def test_depends_on_names_real_services(self):
        problems = []
        for name, service in self.resolved["services"].items():
            deps = service.get("depends_on") or {}
            for dep in deps if isinstance(deps, list) else deps.keys():
                if dep not in self.resolved["services"]:
                    problems.append(f"{name} depends on undefined {dep}")
        self.assertFalse(problems, "\n".join(problems))


class Interpolation(unittest.TestCase):
    """The interpolation rules the checks above rely on (compose's documented syntax)."""

    def test_defaults_required_and_nesting(self):
        self.assertEqual(interpolate("${A:-x}", {}), "x")
        self.assertEqual(interpolate("${A:-x}", {"A": ""}), "x")
        self.assertEqual(interpolate("${A-x}", {"A": ""}), "")
        self.assertEqual(interpolate("${A:-a${B:-b}c}", {}), "abc")
        self.assertEqual(interpolate("${A:-a${B:-b}c}", {"B": "B"}), "aBc")
        self.assertEqual(interpolate("$$A and $A", {"A": "1"}), "$A and 1")
        self.assertEqual(interpolate("${A:+set}", {"A": "1"}), "set")
        with self.assertRaises(MissingRequired):
            interpolate("${A:?give A}", {"A": ""})
        self.assertEqual(undefaulted(parse_template("${A} ${B:-${C}} ${D:-d} ${E:?e}")), ["A", "C"])
        with self.assertRaises(ValueError):
            parse_template("${A:-x")


if __name__ == "__main__":
    unittest.main()
