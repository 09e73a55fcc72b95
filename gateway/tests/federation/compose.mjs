// Composes the gateway's subgraph SDL (fetched from `_service { sdl }` at the URL given) with a
// small second subgraph that references `Concert` and `Order` by key, as a Federation v2 router's
// composition would, and prints {"supergraph": "..."} or {"errors": [...]} on stdout for
// gateway/tests/federation.rs to judge.
import { parse } from 'graphql';
import { composeServices, compositionHasErrors } from '@theguild/federation-composition';

const url = process.argv[2];
if (!url) {
  console.error('usage: node compose.mjs URL');
  process.exit(2);
}
const response = await fetch(url, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ query: '{ _service { sdl } }' }),
});
const body = await response.json();
const sdl = body?.data?._service?.sdl;
if (typeof sdl !== 'string') {
  console.log(JSON.stringify({ errors: [`no _service.sdl: ${JSON.stringify(body)}`] }));
  process.exit(0);
}

// Another team's subgraph: reviews of concerts, and a receipt per order, resolved by the gateway.
const reviews = `
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.5", import: ["@key"])
  type Concert @key(fields: "id", resolvable: false) { id: ID! }
  type Order @key(fields: "id", resolvable: false) { id: ID! }
  type Review { concert: Concert! stars: Int! }
  type Receipt { order: Order! pdfUrl: String! }
  type Query { reviews: [Review!]! receipts: [Receipt!]! }
`;

const result = composeServices([
  { name: 'ticketflow', typeDefs: parse(sdl), url },
  { name: 'reviews', typeDefs: parse(reviews), url: 'http://reviews.invalid/graphql' },
]);
if (compositionHasErrors(result)) {
  console.log(JSON.stringify({ errors: result.errors.map((error) => error.message), sdl }));
} else {
  console.log(JSON.stringify({ supergraph: result.supergraphSdl, sdl }));
}
