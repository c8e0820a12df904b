// Loaded into Omniboard with `node --require` by dashboard/omniboard.py, before Omniboard's own code.
//
// 1. Omniboard calls app.listen(port) with no host, which Node binds to every interface (IPv4 and IPv6).
//    Every listen() given a port without a host binds to ODEFLOW_OMNIBOARD_HOST instead (127.0.0.1 unless
//    the dashboard was told to expose Omniboard).
// 2. Omniboard takes its login only as `-u user:password:secret`, and a command line is readable by every
//    local user (/proc/<pid>/cmdline). The login comes in ODEFLOW_OMNIBOARD_LOGIN (the environment is
//    private to the user) and is added to process.argv here, in memory: the real command line never has it.
// 3. Omniboard's opening queries (the run table's first page, the count of runs, the tag list) read every run
//    on SecantusDB: they are narrowed to the runs they need, with the same answers (omniboard_queries.js).
'use strict';

const net = require('net');

const host = process.env.ODEFLOW_OMNIBOARD_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  const isPort = typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first));
  if (isPort && typeof args[1] !== 'string') {
    args.splice(1, 0, host);
  } else if (first && typeof first === 'object' && !('fd' in first) && !('path' in first) && !first.host) {
    args[0] = { ...first, host };
  }
  return listen.apply(this, args);
};

const login = process.env.ODEFLOW_OMNIBOARD_LOGIN;
delete process.env.ODEFLOW_OMNIBOARD_LOGIN;
if (login) {
  process.argv.push('-u', login);
}

require('./omniboard_queries').narrowOmniboardQueries();
