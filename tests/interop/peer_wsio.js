// A second independent OCPP-J peer (npm ocpp-ws-io, strict schema validation), same stdin/stdout
// protocol as peer.js:
//   node peer_wsio.js cms [PORT]                             -> a CMS on 127.0.0.1:PORT (default ephemeral)
//   node peer_wsio.js charger URL IDENTITY PROTOCOL [PASSWORD] -> a charging station
// "msg" events carry the frame as ocpp-ws-io parsed it, re-serialised (JSON.stringify of the tuple).
'use strict';
const readline = require('readline');
const { OCPPServer, OCPPClient } = require('ocpp-ws-io');

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const clients = new Map();
let nextTx = 7000;

function answer(proto, method, params) {
  const now = new Date().toISOString();
  switch (method) {
    case 'BootNotification': return { status: 'Accepted', currentTime: now, interval: 300 };
    case 'Heartbeat': return { currentTime: now };
    case 'Authorize':
      return proto === 'ocpp1.6' ? { idTagInfo: { status: 'Accepted' } } : { idTokenInfo: { status: 'Accepted' } };
    case 'StartTransaction': nextTx += 1; return { transactionId: nextTx, idTagInfo: { status: 'Accepted' } };
    case 'DataTransfer': return { status: 'Accepted', data: 'interop-pong' };
    case 'SetChargingProfile': case 'ClearChargingProfile': return { status: 'Accepted' };
    case 'GetConfiguration':
      return { configurationKey: [{ key: 'SupportedFeatureProfiles', readonly: true, value: 'Core,SmartCharging' }] };
    case 'GetVariables':
      return {
        getVariableResult: params.getVariableData.map((d) => ({
          attributeStatus: 'Accepted', attributeValue: 'true', component: d.component, variable: d.variable,
        })),
      };
    case 'RemoteStartTransaction': case 'RemoteStopTransaction':
    case 'RequestStartTransaction': case 'RequestStopTransaction':
      return { status: 'Accepted' };
    default: return {};
  }
}

function attach(client, proto) {
  client.on('message', ({ message, direction }) =>
    out({ ev: 'msg', id: client.identity, raw: JSON.stringify(message), outbound: direction === 'OUT' }));
  client.on('strictValidationFailure', (e) => out({ ev: 'strict_failure', id: client.identity, error: String(e && (e.error || e)) }));
  client.handle((method, ctx) => {
    out({ ev: 'call', id: client.identity, method, params: ctx.params });
    return answer(proto, method, ctx.params);
  });
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'cms') {
    const server = new OCPPServer({ protocols: ['ocpp1.6', 'ocpp2.0.1'], strictMode: true, logging: false });
    server.auth((ctx) => ctx.accept({ session: {} }));
    server.on('client', (client) => {
      clients.set(client.identity, client);
      attach(client, client.protocol);
      out({ ev: 'open', id: client.identity, protocol: client.protocol });
      client.on('close', () => { clients.delete(client.identity); out({ ev: 'close', id: client.identity }); });
    });
    const http = await server.listen(Number(args[0] || 0), '127.0.0.1');
    out({ ev: 'ready', port: http.address().port });
  } else {
    const [url, identity, proto, password] = args;
    const cli = new OCPPClient({
      endpoint: url, identity, protocols: [proto], strictMode: true, password, reconnect: false, logging: false,
      securityProfile: password ? 1 : 0,
    });
    attach(cli, proto);
    clients.set(identity, cli);
    await cli.connect();
    out({ ev: 'open', id: identity, protocol: cli.protocol });
  }
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    const cmd = JSON.parse(line);
    const c = clients.get(cmd.id);
    if (!c) { out({ ev: 'error', tag: cmd.tag, error: 'no such client' }); return; }
    try {
      const result = await c.call(cmd.method, cmd.params);
      out({ ev: 'result', tag: cmd.tag, result });
    } catch (e) {
      out({ ev: 'error', tag: cmd.tag, error: String(e), code: e.rpcErrorCode || e.code });
    }
  });
  rl.on('close', () => process.exit(0));
}

main().catch((e) => { out({ ev: 'fatal', error: String(e && e.stack || e) }); process.exit(1); });
