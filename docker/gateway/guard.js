// Checks KServe v2 inference requests before Triton 2.51's HTTP frontend sees them.
//
// That frontend allocates an input's buffer from its declared "shape" before it
// compares the shape with the data or the model, so one JSON request with a huge
// shape aborts the whole server (std::bad_alloc), and its recursive JSON reader can
// be driven into a stack overflow by deep nesting (docs/security.md). Here every
// inference request's JSON header must parse (njs refuses nesting deeper than 32)
// and every input's shape must be at most MAX_DIMS non-negative integers whose
// product stays within $tce_max_elements. Accepted requests go on unchanged
// (the original body, binary tensors included) through the internal /_triton/
// location; refused ones get a 400 naming the input and the problem.
var MAX_DIMS = 8;

function refuse(r, problem) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({error: 'refused by the gateway: ' + problem}));
}

function shapeProblem(input, maxElements) {
    var name = typeof input.name === 'string' ? input.name : '?';
    var shape = input.shape;
    if (!Array.isArray(shape) || shape.length > MAX_DIMS) {
        return "input '" + name + "': shape must be a list of at most " + MAX_DIMS + ' integers';
    }
    var elements = 1;
    for (var i = 0; i < shape.length; i++) {
        var dim = shape[i];
        if (typeof dim !== 'number' || dim < 0 || Math.floor(dim) !== dim) {
            return "input '" + name + "': shape " + JSON.stringify(shape) + ' holds something other than a '
                + 'non-negative integer';
        }
        elements *= dim;
        if (elements > maxElements) {
            return "input '" + name + "': shape " + JSON.stringify(shape) + ' has more than ' + maxElements
                + ' elements';
        }
    }
    return null;
}

function inferenceHeader(r) {
    var body = r.requestBuffer;
    if (body === undefined) {
        return {problem: 'the request body must fit in the gateway\'s buffer'};
    }
    var length = r.headersIn['Inference-Header-Content-Length'];
    if (length !== undefined) {
        var n = Number(length);
        if (!(n >= 0) || Math.floor(n) !== n || n > body.length) {
            return {problem: 'Inference-Header-Content-Length must be an integer within the body size'};
        }
        body = body.slice(0, n);
    }
    try {
        return {header: JSON.parse(body.toString())};
    } catch (e) {
        return {problem: 'the request is not valid JSON (or is nested too deeply): ' + e.message};
    }
}

function infer(r) {
    if (r.method !== 'POST') {
        r.return(405);
        return;
    }
    var parsed = inferenceHeader(r);
    if (parsed.problem) {
        refuse(r, parsed.problem);
        return;
    }
    var inputs = parsed.header && parsed.header.inputs;
    if (!Array.isArray(inputs)) {
        refuse(r, "the request needs an 'inputs' list");
        return;
    }
    var maxElements = Number(r.variables.tce_max_elements);
    for (var i = 0; i < inputs.length; i++) {
        var problem = inputs[i] && typeof inputs[i] === 'object' ? shapeProblem(inputs[i], maxElements)
                                                                 : 'every input must be an object';
        if (problem) {
            refuse(r, problem);
            return;
        }
    }
    r.subrequest('/_triton' + r.uri, {method: 'POST', args: r.variables.args || ''}, function (reply) {
        var pass = ['Content-Type', 'Inference-Header-Content-Length', 'Content-Encoding'];
        for (var j = 0; j < pass.length; j++) {
            if (reply.headersOut[pass[j]] !== undefined) {
                r.headersOut[pass[j]] = reply.headersOut[pass[j]];
            }
        }
        r.return(reply.status, reply.responseBuffer);
    });
}

export default {infer};
