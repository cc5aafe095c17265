// A fast stand-in for Hubble's Observer: streams pre-serialized GetFlowsResponse
// messages on /observer.Observer/GetFlows, for bench/run.py.
//
// It honours nothing in the request (no since, no filters, no field mask): every call
// gets the whole file, in file order. bench/run.py writes the file already shaped like
// the ingester's request would have it (L7 flows only, masked if the ingester asks for a
// field mask). It does not decode messages except to re-stamp times in paced mode.
//
//   node server.js --file FLOWS.bin [--host 127.0.0.1] [--port 0] [--gate] [--end]
//                  [--rate R [--count C] [--times-out TIMES.bin]]
//
// FLOWS.bin: records of a 4-byte big-endian length and that many bytes of a serialized
// GetFlowsResponse.
//   --gate  a call waits for a line "go" on standard input before it streams (so the
//           harness can read the ingester's CPU time between its start-up and the first flow)
//   --end   end the stream (status OK) after the last message; without it the stream stays
//           open after the last message, as Hubble's does with follow=true
//   --rate  paced mode: message i is due at go + i/R seconds, and its flow time (and the
//           response time) is set to that moment; it is sent then, or as soon as the client
//           reads again (flow control), and the report says how far behind it fell;
//           --count caps the messages; --times-out writes the flow times (int64
//           little-endian ns since the epoch)
//
// Standard output: one JSON object per line: listening, loaded, call, started, sent,
// cancelled. Standard input closing (the harness went away) ends the process.

'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const { performance } = require('perf_hooks');

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 0, gate: false, end: false, rate: 0, count: 0, file: '', timesOut: '' };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--file') args.file = next();
    else if (a === '--host') args.host = next();
    else if (a === '--port') args.port = Number(next());
    else if (a === '--gate') args.gate = true;
    else if (a === '--end') args.end = true;
    else if (a === '--rate') args.rate = Number(next());
    else if (a === '--count') args.count = Number(next());
    else if (a === '--times-out') args.timesOut = next();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.file) throw new Error('--file is required');
  return args;
}

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

// Wall-clock nanoseconds since the epoch, with sub-microsecond resolution.
const ANCHOR_NS = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)) - process.hrtime.bigint();
function nowNs() {
  return ANCHOR_NS + process.hrtime.bigint();
}

function loadRecords(path) {
  const data = fs.readFileSync(path);
  const records = [];
  let offset = 0;
  while (offset < data.length) {
    const length = data.readUInt32BE(offset);
    records.push(data.subarray(offset + 4, offset + 4 + length));
    offset += 4 + length;
  }
  return { records, bytes: data.length };
}

// --- protobuf wire format, only as much as re-stamping times needs ---

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

function varint(value) {
  const out = [];
  while (value >= 128) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Buffer.from(out);
}

// The fields of a message as [fieldNumber, start, end] spans of buf (end exclusive).
function fields(buf) {
  const spans = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const wire = tag % 8;
    const field = Math.floor(tag / 8);
    if (wire === 0) [, pos] = readVarint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      spans.push([field, start, pos + length, pos]);
      pos += length;
      continue;
    } else throw new Error(`unsupported wire type ${wire}`);
    spans.push([field, start, pos, pos]);
  }
  return spans;
}

const GETFLOWS_FLOW = 1; // GetFlowsResponse.flow
const GETFLOWS_TIME = 1001; // GetFlowsResponse.time
const FLOW_TIME = 1; // Flow.time

// A record split into the flow without its time and the rest of the response without its
// time, so a time can be put back in when it is sent.
function splitForStamping(record) {
  let flowBody = null;
  const rest = [];
  for (const [field, start, end, payload] of fields(record)) {
    if (field === GETFLOWS_FLOW) {
      const flow = record.subarray(payload, end);
      flowBody = Buffer.concat(fields(flow).filter(([f]) => f !== FLOW_TIME).map(([, s, e]) => flow.subarray(s, e)));
    } else if (field !== GETFLOWS_TIME) {
      rest.push(record.subarray(start, end));
    }
  }
  if (flowBody === null) throw new Error('paced mode needs flows in every record');
  return { flowBody, rest: Buffer.concat(rest) };
}

function lengthDelimited(tagBytes, payload) {
  return Buffer.concat([Buffer.from(tagBytes), varint(payload.length), payload]);
}

function stamped(split, ns) {
  const seconds = Number(ns / 1000000000n);
  const nanos = Number(ns % 1000000000n);
  const ts = Buffer.concat([Buffer.from([0x08]), varint(seconds), Buffer.from([0x10]), varint(nanos)]);
  const flow = lengthDelimited([0x0a], Buffer.concat([lengthDelimited([0x0a], ts), split.flowBody]));
  return Buffer.concat([flow, split.rest, lengthDelimited(varint(GETFLOWS_TIME * 8 + 2), ts)]);
}

// --- serving ---

function main() {
  const args = parseArgs(process.argv);
  const { records: all, bytes } = loadRecords(args.file);
  const records = args.count ? all.slice(0, args.count) : all;
  emit({ event: 'loaded', messages: records.length, bytes });
  const splits = args.rate ? records.map(splitForStamping) : null;

  let gateOpen = !args.gate;
  const waiting = [];
  let stdinBuffer = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    stdinBuffer += chunk;
    let newline;
    while ((newline = stdinBuffer.indexOf('\n')) >= 0) {
      const line = stdinBuffer.slice(0, newline).trim();
      stdinBuffer = stdinBuffer.slice(newline + 1);
      if (line === 'go') {
        gateOpen = true;
        waiting.splice(0).forEach((start) => start());
      }
    }
  });
  process.stdin.on('end', () => process.exit(0));

  let calls = 0;
  function getFlows(call) {
    const callNumber = ++calls;
    const requestFields = fields(call.request).map(([f]) => f);
    emit({ event: 'call', call: callNumber, peer: call.getPeer(), request_bytes: call.request.length, request_fields: requestFields });
    let cancelled = false;
    let sent = 0;
    call.on('cancelled', () => {
      cancelled = true;
      emit({ event: 'cancelled', call: callNumber, sent });
    });
    call.on('error', () => { cancelled = true; });

    const cpuStart = process.cpuUsage();
    let firstNs = 0n;
    const times = args.rate ? new BigInt64Array(records.length) : null;
    let maxBehindMs = 0;

    function finished() {
      const lastNs = nowNs();
      const cpu = process.cpuUsage(cpuStart);
      if (times && args.timesOut) fs.writeFileSync(args.timesOut, Buffer.from(times.buffer));
      emit({
        event: 'sent', call: callNumber, messages: sent, first_ns: firstNs.toString(), last_ns: lastNs.toString(),
        max_behind_ms: maxBehindMs, cpu_s: (cpu.user + cpu.system) / 1e6,
      });
      if (args.end) call.end();
      // else: the stream stays open (follow), until the client cancels or the process ends
    }

    function fullSpeed() {
      while (sent < records.length && !cancelled) {
        const ok = call.write(records[sent++]);
        if (!ok) {
          call.once('drain', fullSpeed);
          return;
        }
      }
      if (!cancelled) finished();
    }

    function paced() {
      const startNs = firstNs;
      const intervalNs = 1e9 / args.rate;
      function tick() {
        if (cancelled) return;
        const now = nowNs();
        const due = Math.min(records.length, Math.floor(Number(now - startNs) / intervalNs) + 1);
        while (sent < due) {
          // The flow happened at its scheduled time, whether or not the client is reading:
          // a reader that falls behind sees the delay as lag, as it would with Hubble.
          const scheduledNs = startNs + BigInt(Math.round(sent * intervalNs));
          const behind = Number(nowNs() - scheduledNs) / 1e6;
          if (behind > maxBehindMs) maxBehindMs = behind;
          times[sent] = scheduledNs;
          const ok = call.write(stamped(splits[sent], scheduledNs));
          sent++;
          if (!ok) {
            call.once('drain', tick);
            return;
          }
        }
        if (sent >= records.length) finished();
        else setTimeout(tick, 1);
      }
      tick();
    }

    function start() {
      if (cancelled) return;
      firstNs = nowNs();
      emit({ event: 'started', call: callNumber, t_ns: firstNs.toString() });
      if (args.rate) paced();
      else fullSpeed();
    }

    if (gateOpen) start();
    else waiting.push(start);
  }

  const passthrough = (buffer) => buffer;
  const service = {
    GetFlows: {
      path: '/observer.Observer/GetFlows',
      requestStream: false,
      responseStream: true,
      requestSerialize: passthrough,
      requestDeserialize: passthrough,
      responseSerialize: passthrough,
      responseDeserialize: passthrough,
    },
  };
  const server = new grpc.Server();
  server.addService(service, { GetFlows: getFlows });
  server.bindAsync(`${args.host}:${args.port}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      process.stderr.write(`bind failed: ${err.message}\n`);
      process.exit(1);
    }
    emit({ event: 'listening', port });
  });
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      server.forceShutdown();
      process.exit(0);
    });
  }
}

main();
