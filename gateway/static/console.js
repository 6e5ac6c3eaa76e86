// console.js: longtail.js on window, for experiments in the browser console.
import * as longtail from "./longtail.js";

window.longtail = longtail;
