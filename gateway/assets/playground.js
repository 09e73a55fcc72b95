// Starts GraphiQL on the gateway's own /graphql endpoint: queries and mutations over HTTP POST,
// subscriptions over WebSocket (graphql-transport-ws) on the same path. The headers typed into
// GraphiQL's header editor (e.g. {"Authorization": "Bearer <accessToken>"}) are sent with every
// HTTP request and as the WebSocket's connection_init payload. The ready tabs (the README's
// operations) come from the page's inert JSON block: the CSP allows no inline script.
(function () {
  'use strict';
  var tabs = [];
  var data = document.getElementById('playground-tabs');
  try {
    tabs = data ? JSON.parse(data.textContent) : [];
  } catch (error) {
    tabs = [];
  }
  var scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
  var fetcher = GraphiQL.createFetcher({
    url: '/graphql',
    subscriptionUrl: scheme + window.location.host + '/graphql',
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultTabs: tabs,
      shouldPersistHeaders: true,
    }),
  );
})();
