// docs/asyncapi.yaml, which the gateway's code generates (services/gateway/tests/api_documents.rs
// keeps the file equal to it), is a valid AsyncAPI 3.0 document: checked against the official
// JSON Schema of AsyncAPI 3.0.0 (@asyncapi/specs), and every $ref in it resolves.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";

import { Ajv } from "ajv";
import addFormats from "ajv-formats";
import { parse } from "yaml";

const require = createRequire(import.meta.url);
const specs = require("@asyncapi/specs");

const document = parse(readFileSync(new URL("../../docs/asyncapi.yaml", import.meta.url), "utf8"));

/// A validator of AsyncAPI 3.0.0 documents from the official schema.
function asyncapi300() {
  // The schema bundles the draft-07 meta-schema itself: Ajv must not add its own copy.
  const ajv = new Ajv({ allErrors: true, strict: false, meta: false, validateSchema: false });
  addFormats.default(ajv);
  return ajv.compile(specs.schemas["3.0.0"]);
}

test("docs/asyncapi.yaml validates against the AsyncAPI 3.0.0 schema", () => {
  assert.equal(document.asyncapi, "3.0.0");
  const validate = asyncapi300();
  const valid = validate(document);
  assert.ok(valid, JSON.stringify(validate.errors?.slice(0, 5), null, 2));
});

test("the validator refuses a document that breaks the AsyncAPI 3.0.0 schema", () => {
  const validate = asyncapi300();
  const broken = structuredClone(document);
  broken.operations.messageSend.action = "publish"; // AsyncAPI 2's word, not 3's
  assert.equal(validate(broken), false);
  const noInfo = structuredClone(document);
  delete noInfo.info;
  assert.equal(validate(noInfo), false);
});

test("every $ref in docs/asyncapi.yaml points into the document", () => {
  const refs = [];
  const walk = (value) => {
    if (Array.isArray(value)) value.forEach(walk);
    else if (value && typeof value === "object") {
      for (const [key, inner] of Object.entries(value)) {
        if (key === "$ref") refs.push(inner);
        else walk(inner);
      }
    }
  };
  walk(document);
  assert.ok(refs.length > 20, `${refs.length} refs`);
  for (const ref of refs) {
    assert.ok(ref.startsWith("#/"), ref);
    const target = ref
      .slice(2)
      .split("/")
      .map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"))
      .reduce((node, part) => node?.[part], document);
    assert.notEqual(target, undefined, `${ref} resolves`);
  }
});
