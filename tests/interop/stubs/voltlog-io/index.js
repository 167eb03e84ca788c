'use strict';
// ocpp-ws-io requires voltlog-io for its optional logger; peer_wsio.js passes logging: false.
const noop = () => {};
const logger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop, child: () => logger };
exports.createLogger = () => logger;
exports.consoleTransport = () => ({ name: 'console', write: noop });
exports.prettyTransport = () => ({ name: 'pretty', write: noop });
