// Runs the GraphQL over HTTP server audits (graphql-http) against the URL given and prints each
// result as one JSON array on stdout, for gateway/tests/conformance.rs to judge.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs URL');
  process.exit(2);
}
const results = await auditServer({ url });
console.log(JSON.stringify(results.map(({ id, name, status, reason }) => ({ id, name, status, reason }))));
