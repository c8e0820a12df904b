// Omniboard's run table on a database of many runs: its three opening queries, narrowed before they reach the
// server, with the same answers. Loaded by omniboard_preload.js.
//
// Omniboard opens its run table with an aggregate that sorts every run by id ($project, $addFields,
// $sort {_id: -1}, $limit 50), one that counts every run ($count), and distinct('omniboard.tags'). A MongoDB
// server answers the sort from its _id index and the count from its metadata; SecantusDB, the no-Docker
// dashboard's server, reads and decodes every run document for each of them (about 30 s each at 100,000 runs).
// Here the page is read from a window of the highest run ids (`_id > top - width`, widened until it holds the
// page: every run above the window's bottom is in it, so a full page is the page of the whole sort), the count of
// every run is the collection's own count, and the tags come from the runs that have one (an index range on
// omniboard.tags, which the observer creates). Sacred numbers runs 1, 2, 3, ...: where a run id of another type
// is present (strings and ObjectIds sort above numbers), or a query has a filter, Omniboard's own query runs.
'use strict';

const path = require('path');

const RUNS = 'runs';
const ID_WINDOW = 8; // run ids one probe for the highest id looks at
const TAGS = 'omniboard.tags';

function omniboardRequire(name) {
  // the packages Omniboard itself loads (its node_modules), not copies of them
  return require(require.resolve(name, { paths: [path.dirname(process.argv[1] || '.')] }));
}

async function topRunId(collection, ObjectId) {
  const first = (filter) => collection.findOne(filter, { projection: { _id: 1 } });
  for (const firstOfType of ['', new ObjectId('0'.repeat(24))]) {
    if ((await first({ _id: { $gte: firstOfType } })) !== null) return null;
  }
  const holdsRun = async (start) => (await first({ _id: { $gte: start, $lt: start + ID_WINDOW } })) !== null;
  if (!(await holdsRun(1))) return null;
  let low = 1;
  while (await holdsRun(2 * low)) low *= 2;
  let high = 2 * low;
  while (high - low > ID_WINDOW) {
    const middle = Math.floor((low + high) / 2);
    if (await holdsRun(middle)) low = middle;
    else high = middle;
  }
  const last = await collection
    .find({ _id: { $gte: low, $lt: high + ID_WINDOW } }, { projection: { _id: 1 } })
    .sort({ _id: -1 })
    .limit(1)
    .toArray();
  return last.length ? last[0]._id : low;
}

// {skip, limit} of a pipeline that pages every run newest first with no filter; null for any other pipeline
function newestPage(stages) {
  const sortAt = stages.findIndex((stage) => '$sort' in stage);
  if (sortAt < 0) return null;
  const sort = stages[sortAt].$sort;
  if (Object.keys(sort).length !== 1 || Number(sort._id) !== -1) return null;
  if (!stages.slice(0, sortAt).every((stage) => '$project' in stage || '$addFields' in stage)) return null;
  let at = sortAt + 1;
  let skip = 0;
  if (stages[at] && '$skip' in stages[at]) {
    skip = Number(stages[at].$skip);
    at += 1;
  }
  if (!(stages[at] && '$limit' in stages[at])) return null;
  return { skip, limit: Number(stages[at].$limit) };
}

async function pageFromWindow(collection, ObjectId, stages, page) {
  const top = await topRunId(collection, ObjectId);
  let width = 2 * (page.skip + page.limit);
  while (top !== null && top - width > 0) {
    const window = [{ $match: { _id: { $gt: top - width } } }, ...stages];
    const rows = await collection.aggregate(window, { allowDiskUse: true }).toArray();
    if (rows.length >= page.limit) {
      console.log(`odeflow: run table page read from the runs with ids above ${top - width}`);
      return rows;
    }
    width *= 8;
  }
  return collection.aggregate(stages, { allowDiskUse: true }).toArray();
}

async function everyTag(collection) {
  const tagged = await collection.find({ [TAGS]: { $gte: '' } }, { projection: { [TAGS]: 1 } }).toArray();
  console.log(`odeflow: tags read from the ${tagged.length} runs that have one`);
  const tags = new Set();
  for (const run of tagged) {
    for (const tag of [].concat((run.omniboard || {}).tags || [])) if (typeof tag === 'string') tags.add(tag);
  }
  return [...tags].sort();
}

function narrowOmniboardQueries() {
  let mongoose;
  let mongodb;
  try {
    mongoose = omniboardRequire('mongoose');
    mongodb = omniboardRequire('mongodb');
  } catch (error) {
    return; // not Omniboard's process: nothing to narrow
  }
  const { ObjectId } = mongodb;
  const aggregateExec = mongoose.Aggregate.prototype.exec;
  mongoose.Aggregate.prototype.exec = function exec(callback) {
    const model = this._model;
    const stages = this.pipeline();
    const page = newestPage(stages);
    const counting = stages.length === 1 && '$count' in stages[0];
    if (typeof callback !== 'function' || !model || model.collection.collectionName !== RUNS || !(page || counting)) {
      return aggregateExec.apply(this, arguments);
    }
    const collection = model.collection.collection; // the driver's own
    const answer = counting
      ? collection.estimatedDocumentCount().then((n) => {
          console.log('odeflow: runs counted by the collection');
          return n ? [{ [stages[0].$count]: n }] : [];
        })
      : pageFromWindow(collection, ObjectId, stages, page);
    answer.then((rows) => callback(null, rows), (error) => callback(error));
    return undefined;
  };
  const distinct = mongodb.Collection.prototype.distinct;
  mongodb.Collection.prototype.distinct = function (key, query, options, callback) {
    const done = [query, options, callback].find((argument) => typeof argument === 'function');
    const filtered = query && typeof query === 'object' && Object.keys(query).length > 0;
    if (this.collectionName !== RUNS || key !== TAGS || filtered || !done) return distinct.apply(this, arguments);
    everyTag(this).then((tags) => done(null, tags), (error) => done(error));
    return undefined;
  };
}

module.exports = { narrowOmniboardQueries, newestPage };
